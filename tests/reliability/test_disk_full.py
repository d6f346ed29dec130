"""The disk running out during a checkpoint write, simulated with a real limit: from step 5 on, the worker
process may not grow any file past a few kB (RLIMIT_FSIZE, SIGXFSZ ignored: writes fail with EFBIG, as they
fail with ENOSPC on a full disk or EDQUOT over a quota). The checkpoint at step 4 fits; the one at step 8
does not. The error names the checkpoint and the file, the previous checkpoint stays loadable, no temporary
folder is left, and once space is back the same command resumes to the uninterrupted result."""

import pytest

from cskd.checkpoint import load_checkpoint
from relutil import WORKER, assert_same, last_error_line, run, weights, worker

BIG = ["--hidden", 512]  # model.safetensors ~21 kB, state.pt ~59 kB


@pytest.mark.parametrize(
    "limit,file", [pytest.param(10_000, "model.safetensors", marks=pytest.mark.slow), (40_000, "state.pt")]
)
def test_write_failure_keeps_previous_checkpoint(tmp_path, limit, file):
    r = run(WORKER, ["--run-dir", tmp_path / "run", *BIG, "--fsize-limit", limit, "--fsize-at-step", 5], check=False)
    assert r.returncode == 1
    ck = tmp_path / "run" / "checkpoints"
    err = last_error_line(r.stderr)
    assert err.startswith(
        f"cskd.checkpoint.CheckpointWriteError: could not write checkpoint {ck / 'last'}: writing {file} failed:"
    ), r.stderr[-3000:]
    assert f"the previous checkpoint {ck / 'last'} is intact and loadable" in err and "disk full" in err
    if file == "model.safetensors":
        assert "File too large" in err  # the OS's own words, through safetensors
    assert load_checkpoint(ck / "last")["global_step"] == 4
    assert sorted(p.name for p in ck.iterdir()) == [
        "last"
    ]  # no half-written temporary folder (no `best` before the first eval)
    if file == "state.pt":
        return  # (the resume below is the same for both cases)
    worker(["--run-dir", tmp_path / "ref", *BIG])
    res = worker(["--run-dir", tmp_path / "run", *BIG])
    assert res["resumed_from"] == 4
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))
