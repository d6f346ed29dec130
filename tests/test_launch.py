"""A phase on two processes through `cskd.launch.run_phase` (PyTorch's launcher, gloo on the CPU), from Python and
from a papermill run of an experiment notebook: the run folder and the numbers of the single-process run."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest
import torch

from cskd.align import align_config
from cskd.config import to_dict
from cskd.kernels import PAPERMILL_KERNEL
from cskd.launch import LAUNCH_CONFIG, LaunchError, run_phase
from cskd.toy import make_toy_world

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from relutil import assert_same, wait_for, weights  # the reliability suite's process and checkpoint helpers

ROOT = Path(__file__).parents[1]
TIMINGS = ("seconds", "cache_seconds", "train_seconds")  # wall-clock times: the only numbers allowed to differ
# A phase-1 run whose 2-process training is the 1-process computation up to float rounding: a student without batch
# norm (timm's test_vit: layer norm), no drop path, views seeded per image (not per rank), a mean loss. DDP averages
# the two half-batches' gradients where one process sums one batch: the same numbers added in another order, float32
# rounding of about 1e-7 relative per operation, a few 1e-6 after 4 AdamW steps. The tolerances below allow 10x that;
# a real difference (a rank training on other data, a lost gradient, a wrong learning rate) is far larger.
TINY = dict(
    student="test_vit",
    student_pretrained=None,
    teacher_pretrained="toy",
    image_size=32,
    drop_path=0.0,
    epochs=1,
    batch_size=16,
    pool_limit=64,
    eval_images=16,
    log_every=1,
    progress=False,
    device="cpu",
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 200, workers=1)


def tiny_align(toy, run_dir, **kw):
    splits = [str(toy / "splits" / f"{s}.txt") for s in ("test", "val")]
    return align_config(
        pool_sources=[str(toy / "images")], exclude_split=splits, run_dir=str(run_dir), **{**TINY, **kw}
    )


def files(run: Path) -> list:
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file())


def test_two_processes_write_the_run_folder_of_one(toy, tmp_path):
    one = run_phase("align", tiny_align(toy, tmp_path / "one"))
    two = run_phase("align", tiny_align(toy, tmp_path / "two"), nproc_per_node=2)
    assert files(tmp_path / "two") == sorted(files(tmp_path / "one") + [LAUNCH_CONFIG])
    assert {"metrics.json", "figures/curves.png", "checkpoints/last/model.safetensors"} <= set(files(tmp_path / "one"))
    assert two == json.loads((tmp_path / "two" / "results.json").read_text())  # what the ranks wrote, read back
    assert two.keys() == one.keys() and two["steps"] == one["steps"] == 4
    numbers = {k for k in one if k not in TIMINGS}
    assert {k: two[k] for k in numbers} == pytest.approx({k: one[k] for k in numbers}, rel=1e-4, abs=1e-6)
    assert_same(weights(tmp_path / "two"), weights(tmp_path / "one"), atol=1e-5)
    state = torch.load(tmp_path / "two" / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert state["world_size"] == 2  # two processes trained it, rank 0 alone wrote it
    lines = {r: [json.loads(line) for line in open(tmp_path / r / "metrics.jsonl")] for r in ("one", "two")}
    assert [x.keys() for x in lines["two"]] == [x.keys() for x in lines["one"]]  # a line per step, the evaluations
    losses = {r: [x["loss"] for x in lines[r] if "loss" in x] for r in lines}
    assert len(losses["two"]) == 4 and losses["two"] == pytest.approx(losses["one"], rel=1e-5)


def test_a_failed_launch_says_why_and_how_to_rerun(toy, tmp_path, capsys):
    cfg = tiny_align(toy, tmp_path / "run", resume=True)
    last = tmp_path / "run" / "checkpoints" / "last"  # a damaged checkpoint: the pre-flight sees one to resume
    last.mkdir(parents=True)  # from, and every rank stops when it loads it
    (last / "state.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LaunchError) as e:
        run_phase("align", cfg, nproc_per_node=2)
    msg = str(e.value)
    assert "cskd align on 2 processes exited with status 1" in msg
    assert f"no model.safetensors in {last}" in msg  # the ranks' own error, in the last lines
    assert (
        f"-m torch.distributed.run --standalone --nproc_per_node=2 -m cskd align -c {cfg.run_dir}/{LAUNCH_CONFIG}"
        in msg
    )
    assert f"no model.safetensors in {last}" in capsys.readouterr().out  # streamed as it came
    assert not (tmp_path / "run" / "results.json").exists()


RUN_PHASE = """import json, sys
from cskd.align import AlignConfig
from cskd.config import from_dict
from cskd.launch import run_phase
print(run_phase("align", from_dict(AlignConfig, json.loads(sys.argv[1])), nproc_per_node=2))
"""


def test_an_interrupt_saves_the_ranks_and_the_same_call_resumes(toy, tmp_path, capsys):
    cfg = tiny_align(toy, tmp_path / "run", epochs=8)  # 32 steps
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", RUN_PHASE, json.dumps(to_dict(cfg))]
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p)  # after the first epoch
    p.send_signal(signal.SIGINT)  # Ctrl-C in a terminal; a notebook kernel's interrupt
    out, err = p.communicate(timeout=120)
    assert p.returncode != 0 and "KeyboardInterrupt" in err, err[-3000:]
    assert "interrupted at step" in out  # both ranks finished their step and rank 0 saved `last`, streamed here
    step = torch.load(tmp_path / "run" / "checkpoints" / "last" / "state.pt", weights_only=True)["global_step"]
    assert 4 <= step < 32
    assert run_phase("align", cfg, nproc_per_node=2)["steps"] == 32  # the same call again: it resumes
    assert f"resuming (step {step} of 32)" in capsys.readouterr().out


def test_an_experiment_notebook_runs_its_phase_on_two_processes(toy, tmp_path):
    run = tmp_path / "run"
    params = dict(TINY, run_dir=str(run), data_root=str(toy), nproc_per_node=2)
    nb = pm.execute_notebook(
        str(ROOT / "nbs" / "experiments" / "align.ipynb"),
        str(tmp_path / "align.ipynb"),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=params,
    )
    printed = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "cskd align on 2 processes (CPU, gloo)" in printed  # the launch, streamed into the cell
    m = json.loads((run / "metrics.json").read_text())
    assert m["steps"] == 4 and m == json.loads((run / "results.json").read_text())
    assert (run / "figures" / "align_loss.png").stat().st_size > 5000  # the notebook's plot, from the run folder
    assert torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)["world_size"] == 2
    bad = dict(params, run_dir=str(tmp_path / "bad"), nproc_per_node=3)  # 16 images do not split into 3
    with pytest.raises(pm.PapermillExecutionError, match="parameter 'batch_size' = 16"):
        pm.execute_notebook(
            str(ROOT / "nbs" / "experiments" / "align.ipynb"),
            str(tmp_path / "bad.ipynb"),
            cwd=str(ROOT),
            **PAPERMILL_KERNEL,
            progress_bar=False,
            parameters=bad,
        )
    assert not (tmp_path / "bad").exists()  # stopped in the first cells: nothing written
