"""Integration tests of cskd.images / cskd.data on real files: datasets that skip or raise on every bad image kind,
in one process and in DataLoader workers; AVA files and splits; the toy world. How `load_image` and `scan` treat each
kind of file on its own is pinned in nbs/04_images.ipynb."""

import warnings
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import skimage
import torch
from PIL import Image

from cskd.data import (
    BadImageError,
    IAADataset,
    UnlabeledPool,
    collate_skip_none,
    eval_transform,
    random_split,
    read_ava,
    read_split,
    train_transform,
    votes_to_dist,
    write_split,
    LabelFileError,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "tests" / "data" / "AVA_sample.txt"
MEAN, STD = (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)


def _photo(name="astronaut.png"):
    return Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One file per kind: good ones (decode to RGB) and bad ones (BadImageError with this reason)."""
    d = tmp_path_factory.mktemp("imgs")
    photo = _photo()
    good, bad = {}, {}
    photo.save(d / "photo.jpg", quality=90)
    good["photo.jpg"] = (512, 512)
    hopper = Image.open(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    hopper.convert("RGB").save(d / "hopper.jpg", quality=80)
    good["hopper.jpg"] = hopper.size
    photo.convert("CMYK").save(d / "cmyk.jpg")
    good["cmyk.jpg"] = (512, 512)
    photo.convert("L").save(d / "grey.jpg")
    good["grey.jpg"] = (512, 512)
    Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)).save(d / "g16.png")
    good["g16.png"] = (512, 512)
    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    good["rgba.png"] = (512, 512)
    pal = photo.convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.save(d / "pal.png", transparency=0)
    good["pal.png"] = (512, 512)
    (d / "zero.jpg").write_bytes(b"")
    bad["zero.jpg"] = "empty file"
    data = (d / "photo.jpg").read_bytes()
    (d / "trunc.jpg").write_bytes(data[: len(data) // 2])
    bad["trunc.jpg"] = "truncated"
    (d / "text.jpg").write_text("this is a text file, not a JPEG\n")
    bad["text.jpg"] = "not an image"
    Image.new("L", (2500, 2500)).save(d / "bomb.png")
    bad["bomb.png"] = "decompression bomb"
    return d, good, bad


@pytest.fixture
def low_bomb_limit(monkeypatch):
    # bomb.png is 6.25 Mpx (~8 kB on disk); lowering PIL's limit makes it a bomb, as a 100k x 100k header would be
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000_000)


def _labels(names):
    ids = [Path(n).stem for n in names]
    rng = np.random.default_rng(0)
    v = rng.integers(0, 20, (len(ids), 10))
    v[:, 4] += 1
    df = pd.DataFrame(v, columns=[f"votes_{k}" for k in range(1, 11)])
    df.insert(0, "image_id", ids)
    df["mean"] = v @ np.arange(1, 11) / v.sum(1)
    return df


def _dataset(files, on_error):
    d, good, bad = files
    names = [*good, *bad]
    paths = [d / n for n in names]
    return IAADataset(paths, _labels(names), eval_transform(32, MEAN, STD), on_error=on_error), good, bad, d


def test_skip_policy_in_process(files, low_bomb_limit):
    ds, good, bad, d = _dataset(files, "skip")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert sum(it is None for it in items) == len(bad)
    assert {it[2] for it in items if it is not None} == {Path(n).stem for n in good}
    assert set(ds.bad_images) == {str(d / n) for n in bad}
    assert len([x for x in w if "skipping bad image" in str(x.message)]) == len(bad)  # never silent
    s = ds.summary()
    assert s.startswith(f"{len(bad)} bad image(s)") and all(str(d / n) in s for n in bad)
    assert not any(str(d / n) + ":" in s for n in good)
    with pytest.warns(UserWarning, match="4 bad image"):
        assert ds.warn_bad() == 4


def test_raise_policy_names_file(files, low_bomb_limit):
    ds, good, bad, d = _dataset(files, "raise")
    i = ds.ids.index("text")
    with pytest.raises(BadImageError, match=r"text\.jpg: not an image"):
        ds[i]


@pytest.mark.parametrize("ctx", ["fork", pytest.param("spawn", marks=pytest.mark.slow)])
def test_dataloader_workers_summary(files, ctx):
    # PIL's default bomb limit here (spawned workers would not see a monkeypatched one): bomb.png is then a good image
    ds, good, bad, d = _dataset(files, "skip")
    bad = {k: v for k, v in bad.items() if k != "bomb.png"}
    dl = torch.utils.data.DataLoader(
        ds, batch_size=3, num_workers=2, collate_fn=collate_skip_none, multiprocessing_context=ctx
    )
    seen = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(2):
            for b in dl:
                if b is not None:
                    assert b[0].shape[1:] == (3, 32, 32) and b[1].shape[1:] == (10,)
                    seen += list(b[2])
    assert sorted(seen) == sorted(2 * ([Path(n).stem for n in good] + ["bomb"]))  # every good item, each epoch
    assert set(ds.bad_images) == {str(d / n) for n in bad}  # records made in the workers reach the parent
    s = ds.summary()
    assert s.startswith(f"{len(bad)} bad image(s)") and all(str(d / n) in s for n in bad)


def test_dataloader_raise_in_worker(files):
    ds, *_ = _dataset(files, "raise")
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    with pytest.raises(BadImageError, match=r"(zero|trunc|text)\.jpg") as e:
        for _ in dl:
            pass
    # re-raised in the parent as our type, path and reason recovered
    assert Path(e.value.path).name in ("zero.jpg", "trunc.jpg", "text.jpg") and e.value.reason


def test_toy_world_contract(tmp_path):
    toy = pytest.importorskip("cskd.toy")
    root = toy.make_toy_world(tmp_path / "toy", n_images=20, image_size=32, seed=0, workers=1)
    labels = read_ava(root / "AVA.txt")
    assert len(labels) == 20
    ds = IAADataset(root / "images", labels, train_transform(32, MEAN, STD))
    x, y, i = ds[0]
    assert x.shape == (3, 32, 32) and y.shape == (10,) and i == labels.image_id[0]
    test = read_split(root / "splits" / "test.txt")
    pool = UnlabeledPool([root / "images"], exclude_ids=test, transform=eval_transform(32, MEAN, STD))
    assert len(pool) == 20 - len(test) and not set(test) & set(pool.ids)
    assert len(UnlabeledPool([root / "images"], exclude_ids=test, include_test=True)) == 20


def test_ava_sample_and_big_file(tmp_path):
    df = read_ava(SAMPLE)
    assert len(df) == 2556 and df.image_id.is_unique
    v = df[[f"votes_{k}" for k in range(1, 11)]].to_numpy()
    np.testing.assert_allclose(df["mean"], v @ np.arange(1, 11) / v.sum(1))
    np.testing.assert_allclose(votes_to_dist(df) @ np.arange(1, 11), df["mean"], rtol=1e-5)
    # a 255,600-line file (AVA size) with 3 bad lines in it: skip counts and names them
    lines = SAMPLE.read_text().splitlines()
    out = [
        f"{k * 2556 + j + 1} {l.split()[1]}x{k} " + " ".join(l.split()[2:])
        for k in range(100)
        for j, l in enumerate(lines)
    ]
    out[1000] = "1001 bad 1 2 3"
    out[200000] = out[199999]
    out[-1] = out[-1].replace(" 0 0 0", " 0 0 zero")
    p = tmp_path / "AVA.txt"
    p.write_text("\n".join(out) + "\n")
    with pytest.raises(LabelFileError) as e:
        read_ava(p)
    msg = str(e.value)
    assert f"{p}:1001: wrong number of fields" in msg and f"{p}:200001: duplicated image_id" in msg
    assert f"{p}:255600: field 15 is not an integer" in msg
    with pytest.warns(UserWarning, match="skipped 3 bad line"):
        big = read_ava(p, on_bad="skip")
    assert len(big) == 255600 - 3 and big.attrs["skipped"] == 3
    assert list(big.attrs["skipped_lines"]) == [1001, 200001, 255600]


def test_splits_roundtrip(tmp_path):
    ids = [f"img{i}" for i in range(101)]
    parts = random_split(ids, (0.7, 0.1, 0.2), seed=3)
    assert [len(p) for p in parts] == [71, 10, 20] and sorted(sum(parts, [])) == sorted(ids)
    assert parts == random_split(list(reversed(ids)), (0.7, 0.1, 0.2), seed=3)
    for name, p in zip(("train", "val", "test"), parts):
        write_split(tmp_path / f"{name}.txt", p)
        assert read_split(tmp_path / f"{name}.txt") == p
    (tmp_path / "bad.txt").write_text("a\nb c\n")
    with pytest.raises(LabelFileError, match=r"bad\.txt:2: expected one image id"):
        read_split(tmp_path / "bad.txt")
