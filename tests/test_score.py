"`cskd score` as a user runs it: a real trained run, real JPEG files (bad ones included), real subprocesses."

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import skimage
from PIL import Image
from cskd_cli import cskd


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
    "Mistakes in the request: exit 2, a message naming the culprit, nothing written (the CLI's main, in process)."
    from cskd.cli import main

    def err(*args):
        code = main([*map(str, args)])
        return code, capsys.readouterr().err

    code, e = err("score", photos / "no_such_picture.jpg", "--run", run_dir, "--out", tmp_path / "x.csv")
    assert code == 2 and "no_such_picture.jpg: no such file or folder" in e, e
    assert not (tmp_path / "x.csv").exists()  # a path named on the command line: nothing scored, nothing written
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


def test_missing_list_entries_are_rows_and_no_images_is_an_error(run_dir, photos, tmp_path):
    "A list naming a file that is gone: a row with the error, the rest scored (exit 3); no image at all: exit 2."
    lst = tmp_path / "list.txt"
    lst.write_text(f"{photos / 'astronaut.jpg'}\nno/such/picture.jpg\n{photos / 'a'}\n")
    out = tmp_path / "x.csv"
    r = cskd("score", lst, "--run", run_dir, "--out", out, "--no-progress")
    assert r.returncode == 3, r.stderr
    df = pd.read_csv(out, keep_default_na=False)
    assert [Path(p).name for p in df.path] == ["astronaut.jpg", "picture.jpg", "a"]
    assert df.pred_mean[0] != "" and df.pred_mean[1] == "" and df.pred_mean[2] == ""
    assert df.error[1] == f"no such file (listed at {lst}:2)", df.error[1]
    assert df.error[2].startswith("is a folder (a list names image files)"), df.error[2]
    assert "1 of 3 image(s) scored; 2 unreadable or missing" in r.stderr and f"{lst}:2" in r.stderr
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no pictures in here")
    (tmp_path / "empty.txt").write_text("# nothing listed yet\n")
    for src in (tmp_path / "empty", tmp_path / "empty.txt"):
        r = cskd("score", src, "--run", run_dir, "--out", tmp_path / "e.csv", "--no-progress")
        assert r.returncode == 2 and f"no images to score in {src}" in r.stderr, r.stderr
    assert not (tmp_path / "e.csv").exists()


def test_out_is_checked_before_any_work_and_no_temporary_file_stays(run_dir, photos, tmp_path):
    "`--out` a folder, or below a file: exit 2 at once (even before a wrong run is noticed); no `.tmp` left anywhere."
    (tmp_path / "results").mkdir()
    (tmp_path / "afile").write_text("x")
    for out, why in [(tmp_path / "results", "is a folder"), (tmp_path / "afile" / "s.csv", "is not a folder")]:
        r = cskd("score", photos, "--run", tmp_path / "no_run", "--out", out, "--no-progress")
        assert r.returncode == 2 and f"--out {out}: " in r.stderr and why in r.stderr, r.stderr
        assert "no_run" not in r.stderr  # checked first: before the run is even looked at
    from cskd.predict import load_scorer, score_images

    with pytest.raises(IsADirectoryError):  # the library's write fails at the rename: its temporary file goes
        score_images(load_scorer(run=run_dir)[0], [photos / "astronaut.jpg"], out=tmp_path / "results", progress=False)
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert list((tmp_path / "results").iterdir()) == []


def test_toy_world_scorer_warns_once_on_other_images(run_dir, photos, tmp_path):
    "The run trained on a toy world: scoring real photos warns once; scoring its own world's images does not."
    r = cskd("score", photos, "--run", run_dir, "--out", tmp_path / "s.csv", "--no-progress")
    assert r.stderr.count("warning: this scorer was trained on cskd's toy world") == 1, r.stderr
    assert f"{len(GOOD) + len(BAD)} image(s) here are not from it" in r.stderr
    toy = run_dir.parent / "toy" / "images"
    r = cskd("score", toy, "--run", run_dir, "--out", tmp_path / "t.csv", "--no-progress")
    assert r.returncode == 0 and "toy world" not in r.stderr, r.stderr


@pytest.fixture(scope="session")
def align_run(run_dir):
    "A real phase-1 run (a ResNet-10t aligned to the random-init toy CLIP, 16 pool images, 32 px)."
    toy, d = run_dir.parent / "toy", run_dir.parent / "align"
    r = cskd(
        "align",
        "--pool-sources",
        toy / "images",
        "--exclude-split",
        toy / "splits" / "test.txt",
        "--pool-limit",
        "16",
        "--student",
        "resnet10t",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--eval-images",
        "8",
        "--progress",
        "false",
        "--run-dir",
        d,
    )
    assert r.returncode == 0, r.stderr
    return d


def test_score_and_export_refuse_an_alignment_run(align_run, photos, tmp_path):
    ck = align_run / "checkpoints" / "last" / "model.safetensors"
    for args in (
        ["score", photos, "--run", align_run, "--out", tmp_path / "s.csv"],
        ["score", photos, "--checkpoint", ck, "--out", tmp_path / "s.csv"],
        ["export", "--run", align_run, "--format", "onnx", "--out", tmp_path / "m.onnx"],
    ):
        r = cskd(*args)
        what = args[0]
        assert r.returncode == 2, r.stderr
        assert f"{align_run}: this is an alignment run; {what} needs a fine-tuning or distillation run" in r.stderr
        assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []
