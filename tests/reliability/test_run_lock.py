"""Two runs on one run folder: the second refuses with an error naming the folder and the first run's pid,
and the first completes intact; a lock left by a dead process is taken over."""

import socket, subprocess, sys

from cskd.checkpoint import load_checkpoint
from relutil import WORKER, assert_same, last_error_line, run, start, wait_for, weights, worker


def test_second_run_is_refused_and_first_completes_intact(tmp_path, reference):
    hold = tmp_path / "hold"
    hold.touch()
    first = start(WORKER, ["--run-dir", tmp_path / "run", "--pause-at-step", 5, "--pause-while", hold])
    try:
        wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", first)  # the first run is mid-way (step 5)
        second = run(WORKER, ["--run-dir", tmp_path / "run"], check=False)
        assert second.returncode != 0
        err = last_error_line(second.stderr)
        assert err.startswith("cskd.run_lock.RunLockedError: run_dir") and str(tmp_path / "run") in err, second.stderr[
            -2000:
        ]
        assert f"in use by running process {first.pid}" in err
        assert first.poll() is None  # the first run is unharmed...
    finally:
        hold.unlink()
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]  # ...and completes
    assert_same(weights(tmp_path / "run"), weights(reference))  # exactly as if alone
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last")["global_step"] == 30
    assert not (tmp_path / "run" / "run.lock").exists()  # released at the end


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.lock").write_text(f"{dead.pid} {socket.gethostname()}\n")
    res = worker(["--run-dir", tmp_path / "run", "--epochs", 1])
    assert res["global_step"] == 10 and not (tmp_path / "run" / "run.lock").exists()
