"A training command without a run folder keeps its work: it writes to runs/<phase>-<timestamp> and says so."

import json
import os
from cskd_cli import cskd

ARGS = ["--encoder", "resnet10t", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]
ARGS += ["--eval-batch-size", "32", "--progress", "false"]


def test_finetune_without_run_dir_writes_a_default_run_folder(tmp_path):
    assert cskd("toy", "toy", "--n-images", "60", cwd=tmp_path).returncode == 0
    r = cskd("finetune", "--data-root", "toy", *ARGS, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("finetune-"), runs
    run = runs[0]
    assert f"no --run-dir given: writing this run to runs/{run.name} (to resume it: --run-dir runs/{run.name})" in (
        r.stderr
    )
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert json.loads((run / "config.json").read_text())["run_dir"] == f"runs/{run.name}"
    r2 = cskd("finetune", "--data-root", "toy", *ARGS, cwd=tmp_path)  # a second run gets its own folder
    assert r2.returncode == 0, r2.stderr
    assert len(list((tmp_path / "runs").iterdir())) == 2
    help_text = cskd("finetune", "--help", cwd=tmp_path).stdout
    assert "runs/finetune-YYYYmmdd-HHMMSS" in " ".join(help_text.split())


def test_under_torchrun_a_run_dir_is_required(tmp_path):
    env = dict(os.environ, WORLD_SIZE="2")  # what torchrun sets; the command refuses before any rank starts work
    r = cskd("finetune", "--data-root", "toy", *ARGS, cwd=tmp_path, env=env)
    assert r.returncode == 2 and "under torchrun, cskd finetune needs --run-dir" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists()
