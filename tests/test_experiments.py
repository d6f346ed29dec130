"""The fine-tuning and distillation experiment notebooks through papermill, and the phases through the
command line: real subprocesses, real toy JPEGs, real timm models."""
import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from cskd.toy import make_toy_world

ROOT = Path(__file__).parents[1]
NBS = ROOT / "nbs" / "experiments"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 500, workers=1)


def execute(name, out_dir, **parameters):
    return pm.execute_notebook(str(NBS / f"{name}.ipynb"), str(out_dir / f"{name}.ipynb"), cwd=str(ROOT),
                               kernel_name="python3", progress_bar=False, parameters=parameters)


def test_finetune_notebook(toy, tmp_path):
    run = tmp_path / "run"
    execute("finetune", tmp_path, run_dir=str(run), data_root=str(toy))
    m = json.loads((run / "metrics.json").read_text())
    assert {"test_srcc", "test_plcc", "test_acc", "test_emd2", "val_srcc"} <= set(m)
    assert -1 <= m["test_srcc"] <= 1 and m["steps"] > 0
    for f in ("curves", "predictions_test"):
        assert (run / "figures" / f"{f}.png").stat().st_size > 5000 and (run / "figures" / f"{f}.pdf").exists()
    assert (run / "checkpoints" / "best" / "model.safetensors").exists()


def test_finetune_notebook_rejects_a_misspelt_parameter(toy, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        execute("finetune", tmp_path, run_dir=str(tmp_path / "run"), data_root=str(toy), lrr=0.1)
    assert "'lrr' (did you mean 'lr'?)" in str(e.value)
    assert not (tmp_path / "run").exists()  # nothing ran


def test_distill_notebook(toy, tmp_path):
    run = tmp_path / "run"
    execute("distill", tmp_path, run_dir=str(run), data_root=str(toy), n_train=64, teacher_epochs=1, epochs=2)
    m = json.loads((run / "metrics.json").read_text())
    assert m["n_labeled"] == 64 and m["n_pool"] == 350  # 500 images minus the 50 + 100 of the val and test splits
    assert {"test_srcc", "val_srcc"} <= set(m)
    assert (run / "teacher" / "checkpoints" / "best" / "model.safetensors").exists()
    assert (run / "teacher_predictions.csv").exists() and (run / "figures" / "loss_parts.png").exists()


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cskd", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_phase_from_the_command_line_with_yaml_and_flags(toy, tmp_path):
    (tmp_path / "ft.yaml").write_text(f"data_root: {toy}\nencoder: resnet10t\nimage_size: 32\nepochs: 1\nbatch_size: 32\n")
    r = cli("finetune", "-c", str(tmp_path / "ft.yaml"), "--run-dir", str(tmp_path / "run"), "--n-train", "96", "--progress", "false")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout[r.stdout.index("{"):])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["n_train"] == 96 and saved["encoder"] == "resnet10t" and saved["lr"] == 3e-4  # flag, YAML, phase default
    assert out["steps"] == 3


def test_command_line_errors_name_the_parameter(toy, tmp_path):
    r = cli("finetune", "--data-root", str(toy), "--head", "scalar")
    assert r.returncode == 2 and "needs head='dist'" in r.stderr
    (tmp_path / "bad.yaml").write_text("epochs: 2\nencodr: resnet18\n")
    r = cli("finetune", "-c", str(tmp_path / "bad.yaml"))
    assert r.returncode == 2 and "bad.yaml" in r.stderr and "did you mean 'encoder'" in r.stderr


def test_pipeline_with_minimal_parameters(toy, tmp_path):
    """The whole method and its baselines on one seed, one epoch each: every step leaves its executed
    notebook, the table has every row, and a rerun skips the finished steps."""
    from cskd.pipeline import run_step
    params = dict(data_root=str(toy), figures_dir=str(tmp_path / "figures"), seeds=[0], image_size=32, n_labeled=64,
                  pool_limit=120, align_epochs=1, finetune_epochs=1, distill_epochs=1, batch_size=32, latency_repeats=2)
    m = run_step("pipeline", tmp_path / "demo", params)
    table = (tmp_path / "demo" / "results_table.md").read_text()
    for row in ("CLIP fine-tuned directly", "IAA teacher", "student, no alignment", "student, aligned, no distillation",
                "student, CSKD"):
        assert row in table, row
    for step in ("align_large", "align_student", "teacher", "cskd_student", "student_no_align", "student_no_distill", "clip_direct"):
        assert list((tmp_path / "demo" / "seed0" / step).glob("*.ipynb")), step
    assert m["cskd_student/params_m"] < m["teacher/params_m"]
    assert (tmp_path / "figures" / "collapse_attention_stats.png").exists()
    log = []
    run_step("pipeline", tmp_path / "demo", params, log=log.append)
    assert log and log[0].startswith("[skip]")
