"""Integration tests of cskd.engine with real processes: DDP (torchrun, gloo on CPU) and torch.compile.
Kills, resumes, the run-folder lock and other faults are in tests/reliability/ (see RELIABILITY.md)."""

import json, subprocess, sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from relutil import ENV, assert_same, kill, wait_for, weights  # the reliability suite's process helpers
import relutil

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "engine_worker.py"


def run(args):
    "Run the engine worker in one process to the end; the JSON line it printed."
    return json.loads(relutil.run(WORKER, args).stdout.strip().splitlines()[-1])


def torchrun(args, nproc=2, timeout=180):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        str(WORKER),
        *map(str, args),
    ]
    p = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("accum", [1, 2])
def test_ddp_two_ranks_match_one_process(tmp_path, accum):
    # no dropout / batch norm, mean loss: 2 ranks x 16 samples must follow 1 process x 32 samples
    common = ["--epochs", 2, "--samples", 320, "--batch-size", 32, "--accum", accum, "--ckpt-every", 4]
    single = run(["--run-dir", tmp_path / "one", *common])
    ddp = torchrun(["--run-dir", tmp_path / "ddp", *common])
    assert ddp["world_size"] == 2 and ddp["global_step"] == single["global_step"] == 20
    assert_same(weights(tmp_path / "ddp"), weights(tmp_path / "one"), atol=1e-5)
    # rank 0 alone writes: one line per logged step, and the checkpoint holds both ranks' RNG states
    steps = [json.loads(l)["step"] for l in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert steps == list(range(5, 21, 5))
    st = torch.load(tmp_path / "ddp" / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert (
        st["world_size"] == 2 and len(st["rng"]) == 2 and not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])
    )
    loss_one = [json.loads(l)["loss"] for l in open(tmp_path / "one" / "metrics.jsonl")]
    loss_ddp = [json.loads(l)["loss"] for l in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert loss_ddp == pytest.approx(loss_one, rel=1e-5)  # the logged loss is the global mean


def test_ddp_resume_after_sigkill(tmp_path):
    common = ["--epochs", 2, "--samples", 640, "--batch-size", 32, "--ckpt-every", 3, "--dropout", 0.2, "--noise", 0.1]
    ref = torchrun(["--run-dir", tmp_path / "ref", *common])
    assert ref["global_step"] == 40 and ref["resumed_from"] is None
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        str(WORKER),
        "--run-dir",
        str(tmp_path / "run"),
        *map(str, common),
        "--step-delay",
        "0.05",
    ]
    p = subprocess.Popen(
        cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p, timeout=120)
    kill(p)
    st = torch.load(tmp_path / "run" / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert 0 < st["global_step"] < 40
    res = torchrun(["--run-dir", tmp_path / "run", *common])
    assert res["resumed_from"] == st["global_step"]
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))


def test_compile_matches_eager_and_saves_plain_keys(tmp_path):
    # torch.compile (inductor, CPU) must not change the result beyond float reordering, nor the checkpoint's key names
    from torch import nn
    from cskd.checkpoint import load_weights
    from cskd.engine import TrainConfig, fit

    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
    step = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    out = {}
    for comp in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))
        fit(
            m,
            ds,
            step,
            TrainConfig(batch_size=16, epochs=2, lr=1e-2, compile=comp, progress=False, run_dir=tmp_path / str(comp)),
        )
        out[comp] = m.state_dict()
    assert_same(out[True], out[False], atol=1e-5)
    assert set(weights(tmp_path / "True")) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    load_weights(
        nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1)), tmp_path / "True" / "checkpoints" / "last"
    )
