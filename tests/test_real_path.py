"""The real path's first mistakes: a misspelt or incomplete dataset stops every experiment notebook in its first
cells and every phase on the command line, with the same words, before anything is written; list flags split."""

import json
import subprocess
import sys
from pathlib import Path

import papermill as pm
import pytest

from cskd.kernels import KERNEL_DISPLAY_NAME, KERNEL_NAME, PAPERMILL_KERNEL
from cskd.toy import make_toy_world

ROOT = Path(__file__).parents[1]
NBS = ROOT / "nbs" / "experiments"
TAKE_DATA_ROOT = sorted(p.stem for p in NBS.glob("*.ipynb") if '"data_root = ' in p.read_text())


def execute(name, out, **parameters):
    return pm.execute_notebook(
        str(NBS / f"{name}.ipynb"),
        str(out),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=parameters,
    )


def cli(*args):
    return subprocess.run([sys.executable, "-m", "cskd", *args], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_every_notebook_that_takes_a_data_root_is_tested():
    assert {"align", "finetune", "distill", "collapse", "clip_knows"} <= set(TAKE_DATA_ROOT), TAKE_DATA_ROOT


@pytest.mark.parametrize("notebook", TAKE_DATA_ROOT)
def test_a_misspelt_data_root_stops_the_notebook_before_anything_is_written(notebook, tmp_path):
    typo = tmp_path / "data" / "avaa"
    with pytest.raises(pm.PapermillExecutionError) as e:
        execute(notebook, tmp_path / "out.ipynb", run_dir=str(tmp_path / "run"), data_root=str(typo))
    for words in ("parameter 'data_root'", f"{typo} is not a folder", f"cskd toy {typo}"):
        assert words in str(e.value), (words, str(e.value)[-600:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.ipynb"]  # no toy world, no run folder


@pytest.fixture
def no_test_split(tmp_path):
    "A dataset whose test split file is missing (as before `cskd splits`)."
    world = make_toy_world(tmp_path / "ava", 20, workers=1)
    (world / "splits" / "test.txt").unlink()
    return world


def test_a_missing_split_says_the_same_in_the_notebook_and_on_the_command_line(no_test_split, tmp_path):
    want = (
        f"parameter 'test_split': {no_test_split}/splits/test.txt is not a file (write the official splits: "
        f"cskd splits ava {no_test_split}; or give your own split file)"
    )
    with pytest.raises(pm.PapermillExecutionError) as e:
        execute("finetune", tmp_path / "out.ipynb", run_dir=str(tmp_path / "nb_run"), data_root=str(no_test_split))
    assert want in str(e.value), str(e.value)[-600:]
    done = cli("finetune", "--data-root", str(no_test_split), "--run-dir", str(tmp_path / "cli_run"))
    assert done.returncode == 2 and want in done.stderr, done.stderr[-600:]
    assert not (tmp_path / "nb_run").exists() and not (tmp_path / "cli_run").exists()


def test_exclude_split_takes_a_comma_separated_list_and_a_missing_one_suggests_cskd_splits(no_test_split, tmp_path):
    "`--exclude-split a,b` is two files, as `--help` says; a missing one names `cskd splits`, not include_test."
    val, test = no_test_split / "splits" / "val.txt", no_test_split / "splits" / "test.txt"
    done = cli(
        "align",
        "--pool-sources",
        str(no_test_split / "images"),
        "--exclude-split",
        f"{val},{test}",
        "--run-dir",
        str(tmp_path / "run"),
    )
    assert done.returncode == 2, done.stderr[-600:]
    problems = [line for line in done.stderr.splitlines() if "parameter 'exclude_split'" in line]
    assert len(problems) == 1 and f"{test} is not a file" in problems[0], done.stderr[-600:]  # val.txt is there
    assert f"cskd splits ava {no_test_split}" in problems[0] and "include_test" not in done.stderr
    assert not (tmp_path / "run").exists()


def _makefile_kernel() -> dict:
    "The kernelspec that `make install` writes (`ipykernel install --name N --display-name D`)."
    line = next(ln for ln in (ROOT / "Makefile").read_text().splitlines() if "ipykernel install" in ln).split()
    return dict(name=line[line.index("--name") + 1], display_name=line[line.index("--display-name") + 1])


def test_every_notebook_declares_the_installed_kernel():
    """JupyterLab marks a notebook modified when its kernelspec differs from the kernel it opens with; nbdev-clean
    writes the kernel's name as its display name, so the installed kernel is named and displayed `cskd`."""
    want = dict(name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME, language="python")
    assert _makefile_kernel() == dict(name=KERNEL_NAME, display_name=KERNEL_DISPLAY_NAME)
    installed = Path(sys.prefix) / "share" / "jupyter" / "kernels" / KERNEL_NAME / "kernel.json"
    if installed.exists() and installed.stat().st_mtime > (ROOT / "Makefile").stat().st_mtime:  # else make rewrites it
        assert json.loads(installed.read_text())["display_name"] == KERNEL_DISPLAY_NAME
    wrong = {
        str(p.relative_to(ROOT)): spec
        for p in sorted((ROOT / "nbs").rglob("*.ipynb"))
        if (spec := json.loads(p.read_text())["metadata"].get("kernelspec")) != want
    }
    assert not wrong, (want, wrong)


BUILD_CACHE = """
import sys
from pathlib import Path
import torch
from cskd.models import TEST_CLIP, clip_teacher
from cskd.teacher_cache import SeededView, ensure_teacher_cache
paths = sorted(Path(sys.argv[1]).glob("*.jpg"))
torch.manual_seed(0)  # one random-init teacher in both processes: one cache
c = ensure_teacher_cache(sys.argv[2], clip_teacher(TEST_CLIP), paths, SeededView(32), 2, device="cpu", progress=False)
print("features", c.open().shape)
"""


def test_two_processes_asking_for_one_teacher_cache_build_it_once(tmp_path):
    "Two runs of a sweep start together with one cache_dir: one builds, the other waits and reads it."
    from cskd.teacher_cache import cache_build_lock

    world = make_toy_world(tmp_path / "toy", 20, workers=1)
    cache = tmp_path / "cache"
    cmd = [sys.executable, "-u", "-c", BUILD_CACHE, str(world / "images"), str(cache)]
    with cache_build_lock(cache):  # both processes reach the lock while it is held: they meet there, not by luck
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        for p in procs:
            assert "another process is building it; waiting" in p.stdout.readline()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-600:] for _, err in outs]
    assert sum("building, because" in out for out, _ in outs) == 1, outs
    assert all("features (20, 2, " in out for out, _ in outs), outs
    assert not list(cache.glob("*.partial*"))
