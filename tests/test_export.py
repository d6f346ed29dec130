"""Exported students: parity with PyTorch (ONNX Runtime and torch.export), scoring real JPEGs from the file alone,
and in an environment of ONNX Runtime, Pillow and numpy alone (cskd installed with `pip install --no-deps`)."""

import importlib.metadata
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage
import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from PIL import Image

from cskd.export import PARITY_ATOL, check_parity, export_scorer
from cskd.exported import FORMATS, load_exported
from cskd.models import IAAHead, IAAModel, build_encoder
from cskd.predict import load_scorer, score_images, training_world

logging.getLogger().setLevel(logging.ERROR)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    "A real fine-tuning run (ResNet-10t, 32 px, one epoch on a 60-image toy world), made in process."
    from cskd.iaa import finetune, finetune_config
    from cskd.toy import make_toy_world

    d = tmp_path_factory.mktemp("export")
    world = make_toy_world(d / "toy", 60, seed=0)
    finetune(
        finetune_config(
            data_root=str(world),
            run_dir=str(d / "run"),
            epochs=1,
            batch_size=16,
            image_size=32,
            encoder="resnet10t",
            eval_batch_size=32,
            progress=False,
        )
    )
    return d / "run"


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    d = tmp_path_factory.mktemp("photos")
    src = Path(skimage.__file__).parent / "data"
    for name in ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png"]:
        Image.open(src / name).convert("RGB").save(d / f"{Path(name).stem}.jpg", quality=88)
    (d / "zero.jpg").write_bytes(b"")
    return d


def test_vit_student_parity(tmp_path):
    "A timm ViT student through both formats, at a batch size other than the traced one."
    torch.manual_seed(0)
    enc = build_encoder("test_vit3", image_size=32)
    m = IAAModel(enc, IAAHead(enc.dim)).eval()
    for fmt, suffix in FORMATS.items():
        ex = load_exported(export_scorer(m, tmp_path / f"vit{suffix}"))
        d = check_parity(m, ex, batch=5, seed=1)
        assert set(d) == {"score", "dist"} and max(d.values()) < PARITY_ATOL, (fmt, d)
        assert ex.meta["encoder"] == "test_vit3" and ex.preprocessing["mean"] == list(enc.mean)


def test_cli_export_then_score_jpegs(run_dir, photos, tmp_path):
    "`cskd export` of a trained CNN run; the exported files score real JPEGs as the PyTorch scorer does."
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "cskd",
            "export",
            "--run",
            str(run_dir),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "s.onnx"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "max |difference| to PyTorch" in r.stdout and (tmp_path / "s.onnx").stat().st_size > 100_000
    from cskd.cli import main

    assert main(["export", "--run", str(run_dir), "--format", "pt2", "--out", str(tmp_path / "s.pt2")]) == 0
    model, cfg = load_scorer(run=run_dir)
    ref = score_images(model, [photos], progress=False)
    assert (ref.error != "").sum() == 1 and ref.pred_mean.notna().sum() == 5
    for f in ("s.onnx", "s.pt2"):
        ex = load_exported(tmp_path / f)
        assert ex.preprocessing == dict(
            image_size=cfg.image_size, mean=list(model.encoder.mean), std=list(model.encoder.std)
        )
        got = score_images(ex, [photos], batch_size=2, progress=False)
        assert got.path.tolist() == ref.path.tolist() and got.error.tolist() == ref.error.tolist()
        assert np.allclose(got.pred_mean.fillna(-1), ref.pred_mean.fillna(-1), atol=PARITY_ATOL), f
        p = [f"p{k}" for k in range(1, 11)]
        assert np.allclose(got[p].fillna(-1).to_numpy(), ref[p].fillna(-1).to_numpy(), atol=PARITY_ATOL), f


def test_export_errors(run_dir, tmp_path, capsys):
    from cskd.cli import main

    assert main(["export", "--run", str(run_dir), "--format", "torchscript", "--out", str(tmp_path / "m.ts")]) == 2
    e = capsys.readouterr().err
    assert "unknown export format 'torchscript'" in e and "pt2" in e, e
    assert main(["export", "--run", str(tmp_path / "nope"), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="unknown export format 'xyz'"):
        export_scorer(load_scorer(run=run_dir)[0], tmp_path / "m.xyz")


TRAINING_CODE = ["cskd.models", "cskd.data", "cskd.images", "cskd.engine", "cskd.iaa", "cskd.align", "cskd.distill"]
TRAINING_CODE += ["cskd.predict", "cskd.config", "timm", "open_clip", "torchvision"]
STANDALONE = """
import json, sys
from cskd.exported import load_exported
paths = sys.argv[2:]
out = {"score": load_exported(sys.argv[1])(paths)["score"].tolist()}
out["imported"] = sorted(m for m in sys.modules if m.split(".")[0] in ("cskd", "timm", "open_clip", "torchvision"))
print(json.dumps(out))
"""


def test_exported_file_alone_gives_the_scores_of_cskd_score(run_dir, tmp_path):
    "Real photographs as they come (scikit-image's PNGs and JPEG) and re-encoded as JPEG, scored from the file alone."
    src = Path(skimage.__file__).parent / "data"
    files = [src / "rocket.jpg", src / "astronaut.png", src / "coffee.png", src / "chelsea.png"]
    for name in ("astronaut", "coffee", "motorcycle_left"):
        Image.open(next(src.glob(f"{name}.*"))).convert("RGB").save(tmp_path / f"{name}.jpg", quality=88)
        files.append(tmp_path / f"{name}.jpg")
    cli = [sys.executable, "-m", "cskd"]
    run = lambda *a: subprocess.run([*cli, *map(str, a)], capture_output=True, text=True, timeout=300)
    r = run("score", *files, "--run", run_dir, "--out", tmp_path / "s.csv", "--no-progress", "--num-workers", "0")
    assert r.returncode == 0, r.stderr
    ref = pd.read_csv(tmp_path / "s.csv")
    assert ref.pred_mean.notna().all() and ref.pred_mean.nunique() == len(files)
    for fmt in FORMATS:
        f = tmp_path / f"student.{fmt}"
        assert run("export", "--run", run_dir, "--format", fmt, "--out", f).returncode == 0
        r = subprocess.run(
            [sys.executable, "-c", STANDALONE, str(f), *map(str, files)], capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, r.stderr
        got = json.loads(r.stdout.splitlines()[-1])
        assert not set(got["imported"]) & set(TRAINING_CODE), got["imported"]  # the file alone: no training code
        assert np.abs(np.array(got["score"]) - ref.pred_mean.to_numpy()).max() < 1e-4, (fmt, got, ref.pred_mean)
        assert "trained on cskd's toy world" in r.stderr  # the toy world's model says so, once
        assert r.stderr.count("trained on cskd's toy world") == 1


def test_export_checks_out_first_and_leaves_nothing(run_dir, tmp_path, capsys):
    from cskd.cli import main

    (tmp_path / "dir.onnx").mkdir()
    cases = [
        (tmp_path / "dir.onnx", "onnx", "is a folder"),
        (tmp_path / "m.pt2", "onnx", "must end in .onnx"),
        (tmp_path / "m.onnx", "pt2", "must end in .pt2"),
    ]
    for out, fmt, why in cases:
        assert main(["export", "--run", str(tmp_path / "no_run"), "--format", fmt, "--out", str(out)]) == 2
        e = capsys.readouterr().err
        assert f"--out {out}: " in e and why in e and "no_run" not in e, e
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["dir.onnx"]
    assert main(["export", "--run", str(run_dir), "--format", "onnx", "--out", str(tmp_path / "ok" / "m.onnx")]) == 0
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["m.onnx"]  # the temporary file was renamed
    meta = load_exported(tmp_path / "ok" / "m.onnx").meta
    assert meta["draft_size"] == meta["image_size"] == 32 and meta["score_range"] == [1.0, 10.0]
    assert meta["trained_on_toy_world"] == str((run_dir.parent / "toy").resolve())


ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_PACKAGES = ["onnxruntime", "pillow", "numpy"]  # the README's install for production scoring
LIGHT_SCORING = """
import importlib.abc, json, math, sys

ABSENT = set(json.loads(sys.argv[1]))
AT_START = set(sys.modules)  # the interpreter's own, and what its .pth files load


class NotInstalled(importlib.abc.MetaPathFinder):
    "What the light environment lacks fails to import, as it would there."

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the light environment)", name=name)


sys.meta_path.insert(0, NotInstalled())
import cskd.exported

out = cskd.exported.load_exported(sys.argv[2])(sys.argv[4:])
try:
    cskd.exported.load_exported(sys.argv[3])
except RuntimeError as e:
    pt2 = str(e)
scores = [None if math.isnan(s) else float(s) for s in out["score"]]
where = cskd.exported.__file__
loaded = sorted(set(sys.modules) - AT_START)
print(json.dumps(dict(score=scores, error=out["error"], pt2=pt2, cskd=where, loaded=loaded)))
"""


def requirement_closure(names) -> set:
    "The distributions `names` and everything they require (extras left out), as installed here."
    seen, todo = set(), [canonicalize_name(n) for n in names]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            reqs = map(Requirement, importlib.metadata.requires(name) or [])
            todo += [canonicalize_name(r.name) for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    return seen


def light_environment(tmp_path) -> tuple[Path, list]:
    """cskd installed as the README says for production scoring (`pip install --no-deps`, here from a copy of the
    sources, into a folder), and the top-level modules of every other distribution installed here that the three
    production packages do not require: what the light environment lacks (torch, timm, pandas, ...)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "cskd", src / "cskd", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src)
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    r = subprocess.run([*pip, "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    present = requirement_closure(PRODUCTION_PACKAGES) | {"cskd"}
    owners = importlib.metadata.packages_distributions()
    absent = [m for m, dists in owners.items() if not {canonicalize_name(d) for d in dists} & present]
    return site, absent


def test_exported_onnx_scores_photos_with_onnxruntime_pillow_and_numpy_alone(run_dir, photos, tmp_path):
    "Real JPEGs, an empty, a truncated and a missing file; the scores of `cskd score` and its reasons, torch absent."
    model, cfg = load_scorer(run=run_dir)
    onnx_file = export_scorer(model, tmp_path / "student.onnx", trained_on=training_world(cfg))
    pt2_file = export_scorer(model, tmp_path / "student.pt2")
    (tmp_path / "truncated.jpg").write_bytes((photos / "astronaut.jpg").read_bytes()[:3000])
    files = sorted(photos.glob("*.jpg")) + [tmp_path / "truncated.jpg"]
    ref = score_images(model, files, progress=False)
    site, absent = light_environment(tmp_path)
    assert {"torch", "torchvision", "timm", "open_clip", "pandas"} <= set(absent), absent
    assert not {"numpy", "PIL", "onnxruntime", "cskd"} & set(absent), absent
    env = dict(os.environ, PYTHONPATH=str(site), PYTHONNOUSERSITE="1", OMP_NUM_THREADS="1")
    args = [json.dumps(absent), onnx_file, pt2_file, *files, tmp_path / "gone.jpg"]
    r = subprocess.run(
        [sys.executable, "-c", LIGHT_SCORING, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.splitlines()[-1])
    assert Path(got["cskd"]).is_relative_to(site), got["cskd"]  # the --no-deps install, not the sources
    assert "torch" not in got["loaded"] and not {m.split(".")[0] for m in got["loaded"]} & set(absent)
    good = ref.error == ""
    assert good.sum() == 5 and (~good).sum() == 2, ref  # zero.jpg and the truncated copy are unreadable
    scores = np.array([np.nan if s is None else s for s in got["score"]])
    assert np.abs(scores[:-1][good] - ref.pred_mean[good]).max() < PARITY_ATOL, (scores, ref.pred_mean)
    assert np.isnan(scores[:-1][~good]).all() and np.isnan(scores[-1])
    reasons = dict(zip([f.name for f in files] + ["gone.jpg"], got["error"]))
    assert reasons["zero.jpg"] == ref.set_index("path").error[str(photos / "zero.jpg")] == "empty file (0 bytes)"
    assert reasons["truncated.jpg"].startswith("cannot decode the image") and reasons["gone.jpg"] == "file not found"
    assert "3 of 8 image(s) unreadable" in r.stderr and "trained on cskd's toy world" in r.stderr, r.stderr
    assert "needs torch" in got["pt2"] and "cskd export --format onnx" in got["pt2"], got["pt2"]
