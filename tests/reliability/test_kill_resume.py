"""SIGKILL at random (seeded) points of a run: mid-epoch, inside evaluation, at every stage of a checkpoint
write. After each kill the `last` checkpoint loads, and the resumed run ends with weights bit-identical to an
uninterrupted run's. Kills are injected deterministically by the worker (tests/reliability/worker.py), or
sent from outside at (seeded) random moments as a crash would."""

import json, os, random, signal

import pytest
import torch

from cskd.checkpoint import load_checkpoint
from relutil import ROOT, assert_same, kill, start, wait_for, weights, worker

ENGINE_WORKER = ROOT / "tests" / "engine_worker.py"
RNG = random.Random(20261125)  # "random" kill points, the same on every run of the suite
# the worker's run: 3 epochs x 10 steps, `last` written at steps 4, 8, 10, 12, 16, 20, 24, 28, 30 (9 writes)
WRITES = RNG.randint(2, 8)  # the checkpoint write that the in-write kills hit (the 2nd..8th: a previous `last` exists)
KILLS = {
    "mid-epoch": ["--kill-at-step", RNG.choice([k for k in range(5, 30) if k % 10])],
    "during-eval": ["--kill-in-eval", RNG.randint(1, 3)],
    "write:tmp-folder-created": ["--kill-on", f"os.mkdir:last.tmp-:{WRITES}"],
    "write:files-written-not-synced": ["--kill-on", f"open:last.tmp-:{2 * WRITES - 1}"],
    "write:before-old-renamed": ["--kill-on", f"os.rename:last.old-:{WRITES - 1}"],
    "write:between-two-renames": ["--kill-on", f"os.rename:last.tmp-:{WRITES}"],
    "write:before-old-deleted": ["--kill-on", f"shutil.rmtree:last.old-:{2 * WRITES}"],
}


@pytest.mark.parametrize("where", list(KILLS))
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, where):
    run = tmp_path / "run"
    p = start(ROOT / "tests" / "reliability" / "worker.py", ["--run-dir", run, *KILLS[where]])
    p.wait(timeout=300)
    assert p.returncode == -9, p.stderr.read()[-3000:]  # it did die by SIGKILL
    assert (run / "run.lock").exists()  # the kill left the lock behind
    st = load_checkpoint(run / "checkpoints" / "last")  # `last` always loads (or its `.old-`)
    assert 0 < st["global_step"] < 30
    res = worker(["--run-dir", run])  # resume: stale lock taken over
    assert res["resumed_from"] == st["global_step"] and res["global_step"] == 30
    assert_same(weights(run), weights(reference))  # bit for bit
    assert_same(weights(run, "best"), weights(reference, "best"))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "last"]  # no temp / old folders left
    steps = [json.loads(l)["step"] for l in open(run / "metrics.jsonl")]
    ref_steps = [json.loads(l)["step"] for l in open(reference / "metrics.jsonl")]
    assert steps == ref_steps  # one clean history, no duplicates


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_sigint_sigterm_save_then_resume_is_bit_identical(tmp_path, reference, sig):
    # the signal reaches the whole process group, as Ctrl-C in a terminal or a cluster's preemption does,
    # while step 14 is being computed; that step completes, `last` holds it, the run exits 128 + signal
    run, pause = tmp_path / "run", tmp_path / "pause"
    pause.touch()
    p = start(
        ROOT / "tests" / "reliability" / "worker.py", ["--run-dir", run, "--pause-at-step", 13, "--pause-while", pause]
    )
    wait_for(f"{pause}.reached", p)
    os.killpg(p.pid, sig)
    pause.unlink()
    out, err = p.communicate(timeout=120)
    assert p.returncode == 128 + sig, err[-3000:]
    assert err.strip().splitlines()[-1] == f"{run}: interrupted at step 14; rerun the same command to resume", err
    assert "Traceback" not in err
    assert not (run / "run.lock").exists()  # released on the way out
    assert load_checkpoint(run / "checkpoints" / "last")["global_step"] == 14
    resumed = run_worker_capturing(["--run-dir", run])
    assert f"{run}: resuming (step 14 of 30)" in resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_from"] == 14
    assert_same(weights(run), weights(reference))  # bit for bit
    assert_same(weights(run, "best"), weights(reference, "best"))
    again = run_worker_capturing(["--run-dir", run])
    assert f"{run}: is finished; nothing to train (step 30 of 30)" in again.stderr


def run_worker_capturing(args):
    from relutil import WORKER, run

    return run(WORKER, args)


# ---- kills sent from outside at (seeded) random moments (moved here from tests/test_engine.py)


def _engine_run(args):
    from relutil import run

    p = run(ENGINE_WORKER, args)
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_sigkill_mid_epoch_with_data_workers_then_resume(tmp_path):
    num_workers = 2  # (the deterministic mid-epoch case above covers num_workers=0)
    # dropout in the model and random noise in the dataset: both RNG paths must be restored; with 2 data workers too
    common = [
        "--epochs",
        2,
        "--samples",
        640,
        "--batch-size",
        32,
        "--ckpt-every",
        3,
        "--dropout",
        0.2,
        "--noise",
        0.1,
        "--num-workers",
        num_workers,
    ]
    ref = _engine_run(["--run-dir", tmp_path / "ref", *common])
    assert ref["global_step"] == 40 and ref["resumed_from"] is None

    p = start(ENGINE_WORKER, ["--run-dir", tmp_path / "run", *common, "--step-delay", 0.05])
    wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p)
    kill(p)
    st = torch.load(tmp_path / "run" / "checkpoints" / "last" / "state.pt", weights_only=True)
    assert 0 < st["step_in_epoch"] < 20 and st["global_step"] < 40, st["global_step"]  # killed mid-epoch
    assert (tmp_path / "run" / "run.lock").exists()  # left behind by the kill

    res = _engine_run(["--run-dir", tmp_path / "run", *common])  # stale lock taken over
    assert res["resumed_from"] == st["global_step"] and res["global_step"] == 40
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))  # bit for bit
    steps = [json.loads(l)["step"] for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(5, 41, 5))  # one clean history


@pytest.mark.slow
def test_kills_during_checkpoint_writes_never_corrupt_last(tmp_path):
    # a 3 MB model with a checkpoint after every step: most of the time is spent writing checkpoints
    import time

    common = ["--epochs", 6, "--samples", 512, "--batch-size", 32, "--hidden", 512, "--layers", 3, "--ckpt-every", 1]
    _engine_run(["--run-dir", tmp_path / "ref", *common])
    last = tmp_path / "run" / "checkpoints" / "last"
    rng, seen = random.Random(0), []
    for _ in range(4):
        p = start(ENGINE_WORKER, ["--run-dir", tmp_path / "run", *common])
        if not seen:
            wait_for(last / "state.pt", p)
        else:
            t = time.time()  # wait for this process to write a newer checkpoint than the previous round's
            while time.time() - t < 60 and p.poll() is None:
                try:
                    if torch.load(last / "state.pt", weights_only=True)["global_step"] > seen[-1]:
                        break
                except Exception:
                    pass  # between the two renames `last` may be briefly absent
                time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.15))
        kill(p)
        st = load_checkpoint(last)  # always loadable
        assert st["global_step"] >= (seen[-1] if seen else 1)
        seen.append(st["global_step"])
    assert seen[-1] < 96, seen  # we did kill mid-run
    res = _engine_run(["--run-dir", tmp_path / "run", *common])
    assert res["resumed_from"] == seen[-1]
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))
    assert sorted(p.name for p in last.parent.iterdir()) == ["last"]  # no temp folders left
