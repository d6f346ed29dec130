"""A dataset with every kind of bad image and bad label lines, through a real fine-tuning run
(`python -m cskd finetune`, a timm resnet10t on a 60-image toy world): with `on_bad_image=skip` the run
completes and reports every bad file; with `raise` it stops with an error naming the file; bad label lines
stop the run with an error naming file:line for each."""

import io, json, struct, zlib

import pytest
from PIL import Image

from relutil import run

FT = [
    "finetune",
    "--encoder",
    "resnet10t",
    "--image-size",
    32,
    "--epochs",
    1,
    "--batch-size",
    6,
    "--eval-batch-size",
    64,
    "--progress",
    "false",
    "--warmup-epochs",
    0,
]


def png_bomb() -> bytes:
    "A 1x1 PNG whose header claims 20000 x 20000 pixels (400 Mpx): a decompression bomb in a few bytes."
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    b = bytearray(buf.getvalue())
    b[16:24] = struct.pack(">II", 20000, 20000)
    b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])))
    return bytes(b)


@pytest.fixture(scope="module")
def bad_world(tmp_path_factory):
    "The toy world with bad files in place of some images; returns (root, {path: expected reason})."
    root = tmp_path_factory.mktemp("bad") / "toy"
    run("cskd", ["toy", root, "--n-images", 60, "--image-size", 32])
    img = root / "images"
    train = (root / "splits" / "train.txt").read_text().split()
    val, test = (root / "splits" / "val.txt").read_text().split(), (root / "splits" / "test.txt").read_text().split()
    jpeg = (img / f"{train[0]}.jpg").read_bytes()
    png = io.BytesIO()
    Image.open(img / f"{train[0]}.jpg").save(png, "PNG")
    png = png.getvalue()
    bad = {
        train[1]: (b"", "empty file"),
        train[2]: (jpeg[: len(jpeg) // 2], "truncated"),
        train[3]: (png[: len(png) // 2], "truncated"),  # a PNG cut short (named .jpg)
        train[4]: (b"id,score\n1,5.5\n", "not an image"),  # text posing as a JPEG
        train[5]: (None, "file not found"),
        train[6]: (png_bomb(), "decompression bomb"),
        val[0]: (b"", "empty file"),
        test[0]: (b"<html>404</html>", "not an image"),
    }
    for i, (data, _) in bad.items():
        f = img / f"{i}.jpg"
        if data is None:
            f.unlink()
        else:
            f.write_bytes(data)
    return root, {str(img / f"{i}.jpg"): why for i, (_, why) in bad.items()}


def test_skip_policy_completes_and_reports_every_bad_file(bad_world, tmp_path):
    root, bad = bad_world
    r = run("cskd", [*FT, "--data-root", root, "--run-dir", tmp_path / "run", "--on-bad-image", "skip"])
    out = json.loads(r.stdout[r.stdout.index("{") :])
    assert (
        out["steps"] == 42 // 6 and out["test_srcc"] == out["test_srcc"]
    )  # 6 divides 42: every image is visited; bad ones drop out of their batches
    report = [l.strip() for l in r.stderr.splitlines() if l.strip().startswith(str(root))]
    for path, why in bad.items():
        assert any(l.startswith(f"{path}: {why}") for l in report), (path, why, r.stderr[-3000:])
    assert (tmp_path / "run" / "checkpoints" / "last" / "model.safetensors").exists()


def test_raise_policy_stops_naming_the_file(bad_world, tmp_path):
    """With --on-bad-image raise a bad image stops the run, named with its reason: by the pre-flight when its sample
    of images holds one (before anything is written), else by training when it meets one."""
    root, bad = bad_world
    r = run("cskd", [*FT, "--data-root", root, "--run-dir", tmp_path / "run", "--on-bad-image", "raise"], check=False)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "cskd finetune: error: " in r.stderr and any(f"{p}: {why}" in r.stderr for p, why in bad.items()), r.stderr
    if "pre-flight" in r.stderr:
        assert not (tmp_path / "run").exists()


def test_bad_label_lines_stop_naming_file_and_line(bad_world, tmp_path):
    root, _ = bad_world
    lines = (root / "AVA.txt").read_text().splitlines()
    f = [l.split() for l in lines]
    f[2] = f[2][:5]  # line 3: too few fields
    f[5][2] = "x"  # line 6: a vote that is not a number
    f[6][3] = "-4"  # line 7: a negative count
    f[8][2:12] = ["0"] * 10  # line 9: no votes at all
    f[9][1] = f[0][1]  # line 10: image of line 1 again
    lines = [" ".join(x) for x in f]
    labels = tmp_path / "AVA_bad.txt"
    labels.write_text("\n".join(lines) + "\n")
    r = run("cskd", [*FT, "--data-root", root, "--labels", labels, "--run-dir", tmp_path / "run"], check=False)
    assert r.returncode == 2
    err = r.stderr
    for n, why in (
        (3, "wrong number of fields"),
        (6, "field 3 is not an integer"),
        (7, "negative vote count"),
        (9, "zero votes"),
        (10, "duplicated image_id"),
    ):
        assert f"{labels}:{n}: {why}" in err, (n, why, err[-3000:])
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training
    # the skip policy: the bad lines are dropped with one warning naming them, their images left out,
    # and the run completes
    r = run(
        "cskd",
        [*FT, "--data-root", root, "--labels", labels, "--run-dir", tmp_path / "run2", "--on-bad-label", "skip"],
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{labels}: skipped 5 bad line(s)" in r.stderr, r.stderr[-3000:]
    assert "left out (on_bad_label='skip')" in r.stderr
    assert (tmp_path / "run2" / "checkpoints" / "last" / "model.safetensors").exists()
