"""The pre-flight on the command line: `--dry-run` checks and writes nothing; a run stops on the same checks before it
builds a model; hub weights that cannot be downloaded fail at once, naming the flag."""

import os

import pytest

from cskd.toy import make_toy_world
from cskd_cli import cskd


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("pre") / "toy", 120)


def offline(tmp_path) -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))


def test_a_phase_dry_run_passes_on_the_toy_world_and_writes_nothing(world, tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    pool = ["--pool-sources", world / "images", "--exclude-split", f"{world}/splits/test.txt,{world}/splits/val.txt"]
    toy = ["--teacher-pretrained", "toy", "--student", "cskd_toy_cnn", "--student-pretrained", "toy"]
    r = cskd("align", *pool, *toy, "--cache", "true", "--cache-dir", cache, "--run-dir", run, "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 problem(s)" in r.stdout and "pool images" in r.stdout and "cache_dir" in r.stdout
    assert not run.exists() and not cache.exists()


def test_hub_weights_offline_fail_before_the_run_starts_and_name_the_flag(world, tmp_path):
    args = [
        "finetune",
        "--data-root",
        world,
        "--encoder",
        "resnet18",
        "--pretrained",
        "true",
        "--run-dir",
        tmp_path / "r",
    ]
    dry = cskd(*args, "--dry-run", env=offline(tmp_path))
    assert dry.returncode == 1, dry.stdout + dry.stderr
    (row,) = [line for line in dry.stdout.splitlines() if line.startswith("problem")]
    assert "pretrained" in row and "HF_HUB_OFFLINE is set" in row and "--pretrained /path/to/" in row
    run = cskd(*args, env=offline(tmp_path))
    assert run.returncode == 2, run.stdout + run.stderr
    assert "parameter 'pretrained'" in run.stderr and "nothing was written" in run.stderr
    assert not (tmp_path / "r").exists()
