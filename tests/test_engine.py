"""Integration tests of cskd.engine with real processes: SIGKILL + resume, a kill storm during
checkpoint writes, the run-folder lock across processes, and DDP (torchrun, gloo on CPU)."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cskd.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "engine_worker.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")


def run(args, timeout=120):
    p = subprocess.run([sys.executable, str(WORKER), *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def start(args):
    "A worker in its own process group, so the kill reaches its data workers too."
    return subprocess.Popen([sys.executable, str(WORKER), *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def descendants(pid):
    "Pids of the processes started (directly or not) by `pid`, from /proc (torchrun puts its ranks in their own groups)."
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try: children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError): pass
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []): out.append(c); todo.append(c)
    return out


def kill(p):
    "SIGKILL the worker and everything it started, all at the same moment (as a crash of the machine would)."
    pids = descendants(p.pid)
    os.killpg(p.pid, signal.SIGKILL)
    for pid in pids:
        try: os.kill(pid, signal.SIGKILL)
        except ProcessLookupError: pass
    p.wait(timeout=30)


def wait_for(path, p, timeout=60):
    t = time.time()
    while not Path(path).exists():
        assert p.poll() is None, f"worker exited early: {p.communicate()[1][-3000:]}"
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.01)


def weights(run_dir):
    return load_file(str(Path(run_dir) / "checkpoints" / "last" / "model.safetensors"))


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0: assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
        else: torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_sigkill_mid_epoch_then_resume_matches_uninterrupted(tmp_path, num_workers):
    # dropout in the model and random noise in the dataset: both RNG paths must be restored
    common = ["--epochs", 2, "--samples", 640, "--batch-size", 32, "--ckpt-every", 3, "--dropout", 0.2, "--noise", 0.1,
              "--num-workers", num_workers]
    ref = run(["--run-dir", tmp_path / "ref", *common])
    assert ref["global_step"] == 40 and ref["resumed_from"] is None

    p = start(["--run-dir", tmp_path / "run", *common, "--step-delay", 0.05])
    wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p)
    kill(p)
    st = torch.load(tmp_path / "run" / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert 0 < st["step_in_epoch"] < 20 and st["global_step"] < 40, st["global_step"]  # killed mid-epoch
    assert (tmp_path / "run" / "run.lock").exists()                                       # left behind by the kill

    res = run(["--run-dir", tmp_path / "run", *common])                                   # stale lock taken over
    assert res["resumed_from"] == st["global_step"] and res["global_step"] == 40
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))                     # bit for bit
    steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(5, 41, 5))                                                 # one clean history


def test_kills_during_checkpoint_writes_never_corrupt_last(tmp_path):
    # a 3 MB model with a checkpoint after every step: most of the time is spent writing checkpoints
    common = ["--epochs", 6, "--samples", 512, "--batch-size", 32, "--hidden", 512, "--layers", 3, "--ckpt-every", 1]
    ref = run(["--run-dir", tmp_path / "ref", *common])
    last = tmp_path / "run" / "checkpoints" / "last"
    rng, seen = random.Random(0), []
    for _ in range(4):
        p = start(["--run-dir", tmp_path / "run", *common])
        if not seen: wait_for(last / "state.pt", p)
        else:
            t = time.time()  # wait for this process to write a newer checkpoint than the previous round's
            while time.time() - t < 60 and p.poll() is None:
                try:
                    if torch.load(last / "state.pt", weights_only=True)["global_step"] > seen[-1]: break
                except Exception: pass  # between the two renames `last` may be briefly absent
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        kill(p)
        st = load_checkpoint(last)                                                       # always loadable
        assert st["global_step"] >= (seen[-1] if seen else 1)
        seen.append(st["global_step"])
    assert seen[-1] < 96, seen                                                           # we did kill mid-run
    res = run(["--run-dir", tmp_path / "run", *common])
    assert res["resumed_from"] == seen[-1]
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last"]                      # no temp folders left


def test_second_run_on_same_folder_is_refused_while_first_lives(tmp_path):
    common = ["--run-dir", tmp_path / "run", "--epochs", 10, "--ckpt-every", 2]
    p = start([*common, "--step-delay", 0.05])
    try:
        wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p)
        second = subprocess.run([sys.executable, str(WORKER), *map(str, common)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert "RunLockedError" in second.stderr and f"in use by running process {p.pid}" in second.stderr, second.stderr[-2000:]
        assert p.poll() is None                                                          # the first run is unharmed
    finally:
        kill(p)
    res = run(common)                                                                    # dead owner: lock taken over
    assert res["resumed_from"] is not None and res["global_step"] == 200


def torchrun(args, nproc=2, timeout=180):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", str(WORKER), *map(str, args)]
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
    assert st["world_size"] == 2 and len(st["rng"]) == 2 and not torch.equal(st["rng"][0]["torch"], st["rng"][1]["torch"])
    loss_one = [json.loads(l)["loss"] for l in open(tmp_path / "one" / "metrics.jsonl")]
    loss_ddp = [json.loads(l)["loss"] for l in open(tmp_path / "ddp" / "metrics.jsonl")]
    assert loss_ddp == pytest.approx(loss_one, rel=1e-5)                                   # the logged loss is the global mean


def test_ddp_resume_after_sigkill(tmp_path):
    common = ["--epochs", 2, "--samples", 640, "--batch-size", 32, "--ckpt-every", 3, "--dropout", 0.2, "--noise", 0.1]
    ref = torchrun(["--run-dir", tmp_path / "ref", *common])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", str(WORKER),
           "--run-dir", str(tmp_path / "run"), *map(str, common), "--step-delay", "0.05"]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
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
    from cskd.engine import TrainConfig, fit, load_weights
    g = torch.Generator().manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.randn(64, 8, generator=g), torch.randn(64, 1, generator=g))
    step = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
    out = {}
    for comp in (False, True):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1))
        fit(m, ds, step, TrainConfig(batch_size=16, epochs=2, lr=1e-2, compile=comp, progress=False, run_dir=tmp_path / str(comp)))
        out[comp] = m.state_dict()
    assert_same(out[True], out[False], atol=1e-5)
    assert set(weights(tmp_path / "True")) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    load_weights(nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 1)), tmp_path / "True" / "checkpoints" / "last")
