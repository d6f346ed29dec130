"""The fine-tuning and distillation experiment notebooks through papermill, and the phases through the
command line: real subprocesses, real toy JPEGs, real timm models."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import papermill as pm
import pytest

from cskd.iaa import FinetuneConfig
from cskd.models import TOY_WEIGHTS_DIR
from cskd.toy import make_toy_world
from cskd.pipeline import PAPERMILL_KERNEL

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
    """The demo's notebook on one seed, one epoch each, with toy models pre-trained on 48 images: the toy
    pre-training is cached, every pipeline step leaves its executed notebook, both tables have every row,
    and a rerun skips the finished work."""
    from cskd.pipeline import run_step

    params = dict(
        data_root=str(toy),
        figures_dir=str(tmp_path / "figures"),
        seeds=[0],
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
    # the encoders started from the shipped toy classifiers: the aligned runs record the files they were given
    for step in ("align_student", "align_large"):
        given = json.loads((seed0 / step / "config.json").read_text())["student_pretrained"]
        assert Path(given).parent == TOY_WEIGHTS_DIR, (step, given)
    pm_ = json.loads((tmp_path / "demo" / "pipeline" / "metrics.json").read_text())
    assert pm_["cskd_student/params_m"] < pm_["teacher/params_m"]
    claims = (tmp_path / "demo" / "claims.md").read_text()
    for c in ("| a |", "| b |", "| c |", "| d-pre |", "| d |", "| d-ctl |", "| f |", "| e |"):
        assert c in claims, c
    assert {f"claim_{c}/gain_mean" for c in "abcde"} <= set(m) and m["seeds"] == 1
    assert (tmp_path / "figures" / "claims.png").exists() and (
        tmp_path / "figures" / "collapse_attention_stats.png"
    ).exists()
    log = []
    run_step("claims", "demo", dict(params, workers=1), log=log.append)  # how many at once: not what is computed
    assert log and log[0].startswith("[skip]")


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

    from cskd.pipeline import ProjectKernelManager, run_parallel

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


def test_forked_kernels_are_processes_of_their_own(tmp_path, monkeypatch):
    """Kernels forked from the warm process (the pipeline's steps): each is its own process and session, with the
    environment, folder and thread count it was started with, and the warm process's imports but none of another
    kernel's state; an error in the notebook is papermill's error as with a fresh kernel; none outlives its run."""
    import nbformat

    from cskd.pipeline import KERNELS, kernel_threads, run_parallel

    code = (
        "import atexit, json, os, torch, matplotlib, cskd.images\n"
        "cskd.images.DECODED.put(('probe',), __import__('PIL.Image').Image.new('RGB', (4, 4)))\n"
        "atexit.register(lambda: open(f'exited-{os.getpid()}', 'w').close())\n"
        "print(json.dumps(dict(pid=os.getpid(), group=os.getpgid(0), threads=torch.get_num_threads(),\n"
        "    probe=os.environ.get('CSKD_PROBE'), cwd=os.getcwd(), decoded=len(cskd.images.DECODED._images),\n"
        "    warm='torchvision' in __import__('sys').modules, backend=matplotlib.get_backend())))"
    )
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nb.metadata["kernelspec"] = dict(name="cskd", display_name="cskd", language="python")
    nbformat.write(nb, tmp_path / "probe.ipynb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CSKD_PROBE", "seen")

    def run(k, kernels="forked"):
        return lambda: pm.execute_notebook("probe.ipynb", f"out{k}.ipynb", **KERNELS[kernels], progress_bar=False)

    with kernel_threads(1):
        done = run_parallel({k: (run(k), []) for k in range(3)}, workers=2)
        fresh = json.loads(run("fresh", "fresh")().cells[0].outputs[0]["text"])
    seen = [json.loads(out.cells[0].outputs[0]["text"]) for out in done.values()]
    assert len({s["pid"] for s in seen}) == 3 and all(s["group"] == s["pid"] for s in seen), seen
    assert all(s["threads"] == 1 and s["probe"] == "seen" and s["cwd"] == str(tmp_path) for s in seen), seen
    assert all(s["decoded"] == 1 and s["warm"] for s in seen), seen  # the imports are shared, the state is not
    assert all(s["backend"] == fresh["backend"] and s["threads"] == fresh["threads"] for s in seen), (seen, fresh)
    for s in seen:
        assert (tmp_path / f"exited-{s['pid']}").exists()  # its exit handlers ran
        with pytest.raises(ProcessLookupError):
            os.kill(s["pid"], 0)
    bad = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("raise ValueError('step broke')")])
    bad.metadata["kernelspec"] = nb.metadata["kernelspec"]
    nbformat.write(bad, tmp_path / "bad.ipynb")
    with pytest.raises(pm.PapermillExecutionError, match="step broke"):
        pm.execute_notebook("bad.ipynb", "bad-out.ipynb", **KERNELS["forked"], progress_bar=False)


def _state(pid: int) -> str:
    "The process's state letter from /proc (R, S, Z, ...), or 'gone'."
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return "gone"


def test_a_forked_kernel_exits_when_its_forkserver_is_gone(tmp_path):
    """A pipeline killed mid-run takes its forkserver with it; the kernels forked from it watch it as their
    parent and exit instead of living on as orphans."""
    import asyncio
    import signal
    import time

    from cskd.pipeline import ForkedKernelManager

    async def start():
        km = ForkedKernelManager()
        await km.start_kernel(cwd=str(tmp_path))
        return km

    km = asyncio.run(start())
    kernel = km.provisioner.pid
    server = int(Path(f"/proc/{kernel}/stat").read_text().rsplit(")", 1)[1].split()[1])  # its parent
    assert _state(kernel) not in ("Z", "gone")
    os.kill(server, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while _state(kernel) not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(kernel) in ("Z", "gone"), f"kernel {kernel} still running without its forkserver"
    asyncio.run(km.cleanup_resources())


def test_a_process_that_leaves_a_forked_kernel_running_still_exits(tmp_path):
    """A script that starts a forked kernel and exits without shutting it down (a failed test, a crash) exits at
    once: multiprocessing does not wait for the kernel, which ends with the forkserver."""
    script = tmp_path / "leave.py"
    script.write_text(
        "import asyncio\n"
        "from cskd.pipeline import ForkedKernelManager\n\n"
        "async def start():\n"
        "    km = ForkedKernelManager()\n"
        "    await km.start_kernel()\n"
        "    print(km.provisioner.pid, flush=True)\n\n"
        "if __name__ == '__main__':\n"
        "    asyncio.run(start())\n"
    )
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kernel = int(done.stdout.split()[-1])
    deadline = time.monotonic() + 30
    while _state(kernel) not in ("Z", "gone") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _state(kernel) in ("Z", "gone"), f"kernel {kernel} outlived the process that started it"
