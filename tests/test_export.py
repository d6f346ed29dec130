"Exported students: parity with PyTorch (ONNX Runtime and torch.export), and scoring real JPEGs from the file alone."

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage
import torch
from PIL import Image

from cskd.export import FORMATS, PARITY_ATOL, check_parity, export_scorer, load_exported
from cskd.models import IAAHead, IAAModel, build_encoder
from cskd.predict import load_scorer, score_images

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
from cskd.export import load_exported
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
