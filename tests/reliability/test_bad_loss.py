"""NaN / inf in the loss: training stops before the optimizer step, with an error naming the step and the last
good checkpoint, which loads, holds finite weights, and resumes to the uninterrupted result."""

import pytest
import torch

from cskd.checkpoint import load_checkpoint
from relutil import assert_same, last_error_line, run, WORKER, weights, worker


@pytest.mark.parametrize(
    "bad,step,epoch,good", [("nan", 7, 0, 4), pytest.param("inf", 13, 1, 12, marks=pytest.mark.slow)]
)
def test_non_finite_loss_stops_naming_step_and_checkpoint(tmp_path, reference, bad, step, epoch, good):
    r = run(WORKER, ["--run-dir", tmp_path / "run", "--bad-loss-at-step", step, "--bad-loss", bad], check=False)
    assert r.returncode == 1
    last = tmp_path / "run" / "checkpoints" / "last"
    assert last_error_line(r.stderr) == (
        f"cskd.engine.NonFiniteLossError: non-finite loss {bad} at step {step} (epoch {epoch}); "
        f"the optimizer step was skipped and training stopped; the last good checkpoint is {last}"
    )
    st = load_checkpoint(last)
    assert st["global_step"] == good
    assert all(torch.isfinite(v).all() for v in weights(tmp_path / "run").values())
    # the cause fixed, the same command resumes from that checkpoint and loses nothing
    res = worker(["--run-dir", tmp_path / "run"])
    assert res["resumed_from"] == good
    assert_same(weights(tmp_path / "run"), weights(reference))
