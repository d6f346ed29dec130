"""The fine-tuning and distillation experiment notebooks through papermill, and the phases through the
command line: real subprocesses, real toy JPEGs, real timm models."""

import json
import os
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from cskd.iaa import FinetuneConfig
from cskd.models import TOY_WEIGHTS_DIR
from cskd.toy import make_toy_world
from cskd.kernels import PAPERMILL_KERNEL

ROOT = Path(__file__).parents[1]
NBS = ROOT / "nbs" / "experiments"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 500, workers=1)


def execute(name, out_dir, **parameters):
    return pm.execute_notebook(
        str(NBS / f"{name}.ipynb"),
        str(out_dir / f"{name}.ipynb"),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=parameters,
    )


def test_finetune_notebook(toy, tmp_path):
    run = tmp_path / "run"
    execute("finetune", tmp_path, run_dir=str(run), data_root=str(toy))
    m = json.loads((run / "metrics.json").read_text())
    assert {"test_srcc", "test_plcc", "test_acc", "test_emd2", "val_srcc"} <= set(m)
    assert -1 <= m["test_srcc"] <= 1 and m["steps"] > 0
    for f in ("curves", "predictions_test"):
        assert (run / "figures" / f"{f}.png").stat().st_size > 5000 and (run / "figures" / f"{f}.pdf").exists()
    assert (run / "checkpoints" / "best" / "model.safetensors").exists()


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
    (tmp_path / "ft.yaml").write_text(
        f"data_root: {toy}\nencoder: resnet10t\nimage_size: 32\nepochs: 1\nbatch_size: 32\n"
    )
    r = cli(
        "finetune",
        "-c",
        str(tmp_path / "ft.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        "--n-train",
        "96",
        "--progress",
        "false",
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout[r.stdout.index("{") :])
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        saved["n_train"] == 96 and saved["encoder"] == "resnet10t" and saved["lr"] == FinetuneConfig().lr == 2e-3
    )  # flag, YAML, phase default (the class's field)
    assert out["steps"] == 3


def test_claims_and_pipeline_with_minimal_parameters(toy, tmp_path, monkeypatch):
    """The demo's notebook on two seeds with phase 1 run once (as the demo runs it), one epoch each: every
    pipeline step leaves its executed notebook, the second seed starts from the first seed's phase 1, both
    tables have every row, and a rerun skips the finished work."""
    from cskd.pipeline import run_step

    params = dict(
        data_root=str(toy),
        figures_dir=str(tmp_path / "figures"),
        seeds=[0, 1],
        align_once=True,
        n_labeled=64,
        pool_limit=120,
        align_epochs=1,
        align_large_epochs=1,
        finetune_epochs=1,
        distill_epochs=1,
        batch_size=32,
        latency_repeats=2,
        collapse_images=8,
    )
    monkeypatch.chdir(tmp_path)  # a relative run folder, as `make demo` gives it
    m = run_step("claims", "demo", params)
    table = (tmp_path / "demo" / "pipeline" / "results_table.md").read_text()
    for row in (
        "CLIP fine-tuned directly",
        "IAA teacher",
        "student, no alignment",
        "student, aligned, no distillation",
        "student, CSKD",
    ):
        assert row in table, row
    seed0 = tmp_path / "demo" / "pipeline" / "seed0"
    for step in (
        "align_large",
        "align_student",
        "teacher",
        "cskd_student",
        "student_no_align",
        "student_no_distill",
        "clip_direct",
        "student_clip_teacher",
        "collapse",
    ):
        assert list((seed0 / step).glob("*.ipynb")), step
    seed1 = tmp_path / "demo" / "pipeline" / "seed1"  # phase 1 once: seed 1 fine-tunes and distils seed 0's
    assert not list(seed1.glob("align_*")) and list((seed1 / "cskd_student").glob("*.ipynb"))
    assert json.loads((seed1 / "teacher" / "config.json").read_text())["init"] == str(
        Path("demo/pipeline/seed0/align_large")
    )
    # the encoders started from the shipped toy classifiers: the aligned runs record the files they were given
    for step in ("align_student", "align_large"):
        given = json.loads((seed0 / step / "config.json").read_text())["student_pretrained"]
        assert Path(given).parent == TOY_WEIGHTS_DIR, (step, given)
    pm_ = json.loads((tmp_path / "demo" / "pipeline" / "metrics.json").read_text())
    assert pm_["cskd_student/params_m"] < pm_["teacher/params_m"]
    claims = (tmp_path / "demo" / "claims.md").read_text()
    for c in ("| a |", "| b |", "| c |", "| d-pre |", "| d |", "| d-ctl |", "| f |", "| e |"):
        assert c in claims, c
    assert {f"claim_{c}/gain_mean" for c in "abcde"} <= set(m) and m["seeds"] == 2
    assert (tmp_path / "figures" / "claims.png").exists() and (
        tmp_path / "figures" / "collapse_attention_stats.png"
    ).exists()
    heads = (tmp_path / "demo" / "claim_e_heads.md").read_text()  # claim e per layer and head, with intervals
    assert "CLIP fine-tuned directly" in heads and " ± " in heads
    log = []
    # how many steps at once and on how many processes: not what is computed (the finished steps are reused)
    run_step("claims", "demo", dict(params, workers=1, nproc_per_node=2), log=log.append)
    assert log and log[0].startswith("[skip]")


def test_dose_study_with_minimal_parameters(toy, tmp_path, monkeypatch):
    """The dose study on one seed with tiny doses: a curve point per dose in order of the phase-1 steps each run
    took, the figure, the claims at the chosen doses; a rerun skips every run."""
    import pandas as pd
    from cskd.pipeline import run_step

    params = dict(
        data_root=str(toy),
        figures_dir=str(tmp_path / "figures"),
        results_dir=str(tmp_path / "results"),
        seeds=[0],
        dose_seeds=[0],
        n_labeled=64,
        pool_limit=128,
        align_epochs=2,
        align_large_epochs=1,
        student_doses=[[64, 2], [128, 1]],  # the same steps on two pools: one pool-or-passes pair
        large_doses=[[64, 1]],
        finetune_epochs=1,
        distill_epochs=1,
        batch_size=32,
    )
    monkeypatch.chdir(tmp_path)
    m = run_step("dose", "dose", params)
    table = pd.read_csv(tmp_path / "results" / "curves.csv")
    student, large = (table[table.model == k] for k in ("student", "large encoder"))
    assert [(r.pool, r.epochs) for r in student.itertuples()] == [(0, 0), (64, 2), (128, 1), (128, 2)]
    assert [(r.pool, r.epochs) for r in large.itertuples()] == [(0, 0), (64, 1), (128, 1)]
    assert list(student.steps) == [0, 4, 4, 8]  # batches of 32 per epoch, as the phase-1 runs counted them
    claims = pd.read_csv(tmp_path / "results" / "claims.csv")
    assert list(claims.claim) == ["c", "d-pre", "d", "d-ctl", "d-teacher", "f"]
    pairs = pd.read_csv(tmp_path / "results" / "pool_or_passes.csv")
    assert list(zip(pairs.ours, pairs.baseline)) == [("128 x 1", "64 x 2")] and m["pool_pairs"] == 1
    assert (tmp_path / "figures" / "dose.png").exists() and m["runs"] == 6 + 2 + 1 + 1  # rows: pipeline, doses, dose 0
    run_step("dose", "dose", params, force=True)  # the notebook again: every run it starts is found finished
    printed = (tmp_path / "dose" / "dose.ipynb").read_text()
    assert printed.count("[skip]") == 8 + 2 * 2 + 2 + 1 and "[run]" not in printed


def test_claims_notebook_rejects_bad_parameters(toy, tmp_path):
    with pytest.raises(pm.PapermillExecutionError) as e:
        execute("claims", tmp_path, run_dir=str(tmp_path / "run"), data_root=str(toy), seeds=[0, 0])
    assert "repeated seeds" in str(e.value)
    with pytest.raises(pm.PapermillExecutionError) as e:
        execute("claims", tmp_path, run_dir=str(tmp_path / "run"), data_root=str(toy), prompt="paper")
    assert "'prompt' (did you mean 'prompts'?)" in str(e.value)
    assert not (tmp_path / "run").exists()


def test_a_step_never_takes_another_notebooks_result(toy, tmp_path):
    """A run folder finished by one notebook is not mistaken for another notebook's result with the same
    parameters (an older demo's folder, for instance): the step runs, after clearing the folder."""
    from cskd.pipeline import run_step

    run = tmp_path / "step"
    run.mkdir()
    params = dict(data_root=str(toy), lrr=0.1)
    (run / "step.json").write_text(json.dumps(dict(notebook="pipeline", parameters=dict(params, run_dir=str(run)))))
    (run / "metrics.json").write_text('{"stale": 1}')
    with pytest.raises(pm.PapermillExecutionError) as e:  # it ran: the finetune notebook rejects the misspelt parameter
        run_step("finetune", run, params)
    assert "'lrr' (did you mean 'lr'?)" in str(e.value) and not (run / "metrics.json").exists()
    assert json.loads((run / "step.json").read_text())["notebook"] == "finetune"


def _bogus_kernels(root: Path) -> Path:
    "A Jupyter path whose `python3` and `cskd` kernelspecs point at an interpreter that does not exist."
    for name in ("python3", "cskd"):
        d = root / "kernels" / name
        d.mkdir(parents=True)
        argv = ["/nonexistent/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
        (d / "kernel.json").write_text(json.dumps(dict(argv=argv, display_name=f"broken {name}", language="python")))
    return root


RUN_STEP = """
import json, sys
from cskd.pipeline import run_step
m = run_step("finetune", sys.argv[1], json.loads(sys.argv[2]))
print("test_srcc" in m)
"""


def test_cskd_runs_notebooks_under_its_own_kernel_whatever_python3_is(toy, tmp_path):
    "A broken `python3` (and `cskd`) kernelspec first on JUPYTER_PATH: a plain papermill run fails, cskd's does not."
    env = dict(os.environ, JUPYTER_PATH=str(_bogus_kernels(tmp_path / "jupyter")))
    plain = "import papermill as pm, sys; pm.execute_notebook(sys.argv[1], sys.argv[2], kernel_name='python3')"
    nb = str(NBS / "finetune.ipynb")
    r = subprocess.run([sys.executable, "-c", plain, nb, str(tmp_path / "p.ipynb")], env=env, capture_output=True)
    assert r.returncode != 0 and b"nonexistent" in r.stderr  # the bogus spec is really the one found
    params = dict(data_root=str(toy), epochs=1, n_train=64, encoder="resnet10t", pretrained=None, image_size=32)
    r = subprocess.run(
        [sys.executable, "-c", RUN_STEP, str(tmp_path / "run"), json.dumps(params)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("True"), r.stderr[-3000:]
    out = json.loads((tmp_path / "run" / "finetune.ipynb").read_text())
    assert out["metadata"]["kernelspec"]["name"] == "cskd"


def test_collapse_figures_of_a_random_init_model_are_the_same_on_every_run(toy, tmp_path):
    "The pipeline's 'encoder before alignment' is a spec without weights: two runs give the same bytes (make demo)."
    models = {"CLIP": "clip:cskd-toy-vit", "encoder before alignment": "timm:vit_tiny_patch16_224"}
    params = dict(data_root=str(toy), images=4, gallery_images=1, image_size=32, batch_size=4, models=models)
    runs = [tmp_path / f"run{k}" for k in (1, 2)]
    for run in runs:
        execute("collapse", tmp_path, run_dir=str(run), **params)
    metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
    for m in metrics:
        m.pop("seconds")
    assert metrics[0] == metrics[1]
    pngs = sorted(p.name for p in (runs[0] / "figures").glob("*.png"))
    assert "collapse_gallery_encoder_before_alignment.png" in pngs and len(pngs) == 4, pngs
    for name in pngs:
        assert (runs[0] / "figures" / name).read_bytes() == (runs[1] / "figures" / name).read_bytes(), name


def test_kernels_started_at_once_from_one_folder_do_not_collide(tmp_path, monkeypatch):
    """Four notebooks executed at the same moment from one folder (the pipeline's parallel steps, or two papermill
    runs side by side): each kernel gets its own sockets, and none is left behind in the folder or in /tmp."""
    import asyncio
    import nbformat
    import tempfile

    from cskd.kernels import ProjectKernelManager
    from cskd.pipeline import run_parallel

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import os\nprint(os.getpid())")])
    nb.metadata["kernelspec"] = dict(name="cskd", display_name="cskd", language="python")
    nbformat.write(nb, tmp_path / "tiny.ipynb")
    monkeypatch.chdir(tmp_path)
    sockets = Path(tempfile.mkdtemp(prefix="k", dir="/tmp"))  # short: a socket path has at most ~107 characters
    monkeypatch.setattr(tempfile, "tempdir", str(sockets))  # this test's kernels only (other tests run beside it)

    def run(k):
        return lambda: pm.execute_notebook("tiny.ipynb", f"out{k}.ipynb", **PAPERMILL_KERNEL, progress_bar=False)

    done = run_parallel({k: (run(k), []) for k in range(4)}, workers=4)
    pids = {out.cells[0].outputs[0]["text"] for out in done.values()}
    assert len(pids) == 4  # four kernels, each ran its cell
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "out0.ipynb",
        "out1.ipynb",
        "out2.ipynb",
        "out3.ipynb",
        "tiny.ipynb",
    ]
    assert list(sockets.iterdir()) == []  # every kernel's socket folder removed at shutdown
    km = ProjectKernelManager()
    assert Path(km.ip).parent.parent == sockets and Path(km.ip).parent.name.startswith("cskd-kernel-")
    asyncio.run(km.cleanup_resources())  # never started: its folder goes too
    assert list(sockets.iterdir()) == []
    sockets.rmdir()


def test_a_step_runs_again_when_a_step_it_reads_ran_again(toy, tmp_path):
    """The teacher's folder is the same path after align_large ran again with more epochs: a step names the
    folders it reads (`inputs`), so it runs again when their results changed, and is skipped when they did not."""
    from cskd.pipeline import result_fingerprint, run_step

    quick = dict(data_root=str(toy), n_train=64, encoder="resnet10t", pretrained=None, image_size=32, batch_size=32)
    first, second = tmp_path / "first", tmp_path / "second"
    run_step("finetune", first, dict(quick, epochs=1))
    log = []
    run_step("finetune", second, dict(quick, epochs=1, init=str(first)), inputs=[first], log=log.append)
    run_step("finetune", second, dict(quick, epochs=1, init=str(first)), inputs=[first], log=log.append)
    assert log[0].startswith("[run]") and log[-1].startswith("[skip]"), log
    before = result_fingerprint(first)
    run_step("finetune", first, dict(quick, epochs=2))  # the earlier step again, other parameters
    assert result_fingerprint(first) != before
    log.clear()
    run_step("finetune", second, dict(quick, epochs=1, init=str(first)), inputs=[first], log=log.append)
    assert log[0].startswith("[run]"), log
    recorded = json.loads((second / "step.json").read_text())["inputs"]
    assert recorded == {str(first): result_fingerprint(first)}
    with pytest.raises(FileNotFoundError, match="no finished step there"):
        run_step("finetune", tmp_path / "third", quick, inputs=[tmp_path / "nowhere"])
