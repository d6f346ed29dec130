"Exported students: parity with PyTorch (ONNX Runtime and torch.export), and scoring real JPEGs from the file alone."

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
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
