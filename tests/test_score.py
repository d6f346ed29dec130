"`cskd score` as a user runs it: a real trained run, real JPEG files (bad ones included), real subprocesses."

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage
from PIL import Image


def cskd(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "cskd", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
    "A real fine-tuning run: ResNet-10t, 32 px, one epoch on a 60-image toy world (seconds)."
    d = tmp_path_factory.mktemp("score")
    assert cskd("toy", d / "toy", "--n-images", "60").returncode == 0
    r = cskd(
        "finetune",
        "--data-root",
        d / "toy",
        "--encoder",
        "resnet10t",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "16",
        "--eval-batch-size",
        "32",
        "--progress",
        "false",
        "--run-dir",
        d / "run",
    )
    assert r.returncode == 0, r.stderr
    return d / "run"


GOOD = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "grass"]


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    "Real photos re-encoded as JPEG in a nested folder, plus a zero-byte, a truncated and a text file named .jpg."
    d = tmp_path_factory.mktemp("photos")
    (d / "a" / "b").mkdir(parents=True)
    src = Path(skimage.__file__).parent / "data"
    for i, name in enumerate(GOOD):
        f = next(src.glob(f"{name}.*"))
        sub = ["", "a", "a/b"][i % 3]
        Image.open(f).convert("RGB").save(d / sub / f"{name}.jpg", quality=88)
    (d / "zero.jpg").write_bytes(b"")
    data = (d / "astronaut.jpg").read_bytes()
    (d / "a" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "a" / "b" / "notes.jpg").write_text("these are my holiday notes, not a picture\n")
    (d / "README.txt").write_text("not an image: a folder scan skips it\n")
    return d


BAD = {"zero.jpg": "empty file", "truncated.jpg": "truncated", "notes.jpg": "not an image"}


def test_score_folder_with_bad_images(run_dir, photos, tmp_path):
    out = tmp_path / "scores.csv"
    r = cskd(
        "score", photos, "--run", run_dir, "--out", out, "--num-workers", "2", "--batch-size", "4", "--no-progress"
    )
    assert r.returncode == 3, r.stderr  # finished, some images unreadable
    df = pd.read_csv(out, keep_default_na=False)
    names = df.path.map(lambda p: Path(p).name).tolist()
    assert sorted(names) == sorted([f"{g}.jpg" for g in GOOD] + list(BAD))  # one row per image, nothing dropped
    assert df.columns.tolist() == ["path", "pred_mean"] + [f"p{k}" for k in range(1, 11)] + ["error"]
    ok = df[df.error == ""]
    assert len(ok) == len(GOOD)
    scores = ok.pred_mean.astype(float)
    assert scores.between(1, 10).all() and scores.nunique() > 1
    assert np.allclose(ok[[f"p{k}" for k in range(1, 11)]].astype(float).sum(axis=1), 1, atol=1e-4)
    for name, why in BAD.items():
        row = df[df.path.str.endswith(name)].iloc[0]
        assert row.pred_mean == "" and why in row.error, (name, row.error)
        assert name in r.stderr  # the summary names every bad file
    assert f"{len(GOOD)} of {len(GOOD) + len(BAD)} image(s) scored; {len(BAD)} unreadable" in r.stderr
    assert f"wrote {len(GOOD) + len(BAD)} row(s)" in r.stdout
    # the same scores from the library, one image per batch, no workers: batching and workers change nothing
    from cskd.predict import load_scorer, score_images

    lib = score_images(load_scorer(run=run_dir)[0], [photos], batch_size=1, num_workers=0, progress=False)
    assert df.path.tolist() == lib.path.tolist() and df.error.tolist() == lib.error.tolist()
    assert np.allclose(df.pred_mean.replace("", -1).astype(float), lib.pred_mean.fillna(-1), atol=1e-5)


def test_score_file_list_and_checkpoint(run_dir, photos, tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text(f"# my picks\n{photos / 'astronaut.jpg'}\n\n{photos / 'a' / 'b' / 'notes.jpg'}\n")
    ck = run_dir / "checkpoints" / "best" / "model.safetensors"
    assert ck.exists()
    out = tmp_path / "s.csv"
    r = cskd("score", lst, photos / "a" / "chelsea.jpg", "--checkpoint", ck, "--out", out, "--no-progress")
    assert r.returncode == 3, r.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert [Path(p).name for p in df.path] == ["astronaut.jpg", "notes.jpg", "chelsea.jpg"]
    assert df.error.ne("").tolist() == [False, True, False]
    # --run (best checkpoint) gives the same scores; only good images: exit status 0
    from cskd.cli import main

    assert (
        main(
            [
                "score",
                str(photos / "astronaut.jpg"),
                str(photos / "a" / "chelsea.jpg"),
                "--run",
                str(run_dir),
                "--out",
                str(tmp_path / "g.csv"),
                "--no-progress",
                "--num-workers",
                "0",
            ]
        )
        == 0
    )
    g = pd.read_csv(tmp_path / "g.csv")
    assert np.allclose(g.pred_mean, df.pred_mean[df.error == ""].astype(float), atol=1e-6)


def test_score_request_errors(run_dir, photos, tmp_path, capsys):
    "Mistakes in the request: exit status 2, a message naming the culprit, nothing written (the CLI's main, in process)."
    from cskd.cli import main

    def err(*args):
        code = main([*map(str, args)])
        return code, capsys.readouterr().err

    lst = tmp_path / "list.txt"
    lst.write_text(f"{photos / 'astronaut.jpg'}\nno/such/picture.jpg\n")
    code, e = err("score", lst, "--run", run_dir, "--out", tmp_path / "x.csv")
    assert code == 2 and "list.txt:2: no/such/picture.jpg: no such file" in e, e
    assert not (tmp_path / "x.csv").exists()  # nothing scored, nothing written
    code, e = err("score", photos, "--run", tmp_path / "missing_run", "--out", tmp_path / "x.csv")
    assert code == 2 and "missing_run" in e and "does not exist" in e, e
    (tmp_path / "notarun").mkdir()
    code, e = err("score", photos, "--run", tmp_path / "notarun")
    assert code == 2 and "config.json" in e, e
    lone = tmp_path / "lone.safetensors"
    lone.write_bytes((run_dir / "checkpoints" / "best" / "model.safetensors").read_bytes())
    code, e = err("score", photos, "--checkpoint", lone)
    assert code == 2 and "no config.json next to checkpoint" in e, e
    code, e = err("score", photos, "--run", run_dir, "--batch-size", "0")
    assert code == 2 and "--batch-size = 0" in e, e
    with pytest.raises(SystemExit) as ex:
        main(["score", str(photos)])
    assert ex.value.code == 2 and "--run" in capsys.readouterr().err
