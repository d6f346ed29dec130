"Training visible while it runs, from the command line: eval lines, TensorBoard event files, the run's report."

import json

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from cskd_cli import cskd


def test_finetune_cli_shows_evals_writes_tensorboard_and_the_notebooks_report(tmp_path):
    toy, run = tmp_path / "toy", tmp_path / "run"
    assert cskd("toy", toy, "--n-images", "120").returncode == 0
    args = ["finetune", "--data-root", toy, "--run-dir", run, "--encoder", "vit_tiny_patch16_224", "--image-size", "32"]
    args += ["--epochs", "2", "--batch-size", "8", "--log-every", "2", "--device", "cpu", "--tensorboard", "true"]
    r = cskd(*args)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "config.json").read_text())["tensorboard"] is True

    # one line per evaluation, with the step, the epoch and the metrics of metrics.jsonl
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [rec for rec in lines if "eval/val_srcc" in rec]
    assert len(evals) == 2, lines
    printed = [line for line in r.stdout.splitlines() if line.startswith("eval step ")]
    assert [p.split(":")[0] for p in printed] == [f"eval step {e['step']} epoch {e['epoch']:g}" for e in evals]
    assert f"val_srcc {evals[-1]['eval/val_srcc']:.4g}" in printed[-1]

    # the event files hold every logged scalar, at its step, with the value of metrics.jsonl
    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    expected = {}
    for rec in lines:
        for k, v in rec.items():
            if k not in ("step", "epoch"):
                expected.setdefault(k if "/" in k else f"train/{k}", []).append((rec["step"], v))
    assert {"train/loss", "train/lr", "eval/val_srcc", "eval/val_plcc"} <= set(expected)
    assert set(acc.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert all(abs(g - v) <= 1e-6 * max(1.0, abs(v)) for (_, g), (_, v) in zip(got, points)), tag

    # the same report as a papermill run of nbs/experiments/finetune.ipynb: metrics.json and figures/
    assert json.loads((run / "metrics.json").read_text()) == json.loads((run / "results.json").read_text())
    for name in ("curves", "predictions_test"):
        for ext in ("png", "pdf"):
            assert (run / "figures" / f"{name}.{ext}").stat().st_size > 1000, (name, ext)


def test_tensorboard_flag_is_checked_before_any_work(tmp_path):
    r = cskd("finetune", "--run-dir", tmp_path / "run", "--tensorboard", "maybe")
    assert r.returncode == 2 and "tensorboard" in r.stderr and not (tmp_path / "run").exists()
