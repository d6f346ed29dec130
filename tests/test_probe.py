"""cskd.probe with real models and JPEGs: the embedding cache (what changes its key and what does not), embeddings of
timm and CLIP encoders, and the probe protocol for a CLIP and a timm backbone on one toy world. The closed-form fits
(standardiser, ridge path, OLS against lstsq, cross-validation) are pinned in nbs/26_probe.ipynb."""

import json
import os
import time

import numpy as np
import pytest
import torch

from cskd.data import IAADataset, eval_transform, read_ava
from cskd.models import TEST_CLIP, build_encoder, clip_teacher, encoder
from cskd.probe import (
    dataset_targets,
    embed,
    probe_backbone,
    probe_datasets,
)
from cskd.runs import weights_fingerprint
from cskd.toy import make_toy_world


# ---------------------------------------------------------------- embeddings and the cache


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 200, image_size=32, workers=1)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return clip_teacher(TEST_CLIP)


def _ds(world, model, ids=None, size=32, **kw):
    labels = read_ava(world / "AVA.txt")
    if ids is not None:
        labels = labels.set_index("image_id", drop=False).loc[ids].reset_index(drop=True)
    return IAADataset(world / "images", labels, eval_transform(size, model.mean, model.std), **kw)


class _Counter:
    def __init__(self, module):
        self.n = 0
        self.h = module.register_forward_hook(self)

    def __call__(self, m, i, o):
        self.n += len(i[0])


def test_cache_reuse_and_invalidation(tmp_path, world, teacher):
    cache = tmp_path / "cache"
    ids40 = read_ava(world / "AVA.txt").image_id[:40].tolist()
    ds = _ds(world, teacher, ids40)
    c = _Counter(teacher.clip.visual)
    try:
        ids, X = embed(teacher, ds, cache, batch_size=16, progress=False)
        assert c.n == 40 and ids == ids40 and X.shape == (40, 32) and X.dtype == np.float32
        ids_b, X_b = embed(teacher, ds, cache, batch_size=7, progress=False)
        assert c.n == 40 and ids_b == ids and np.array_equal(X_b, X)  # reused
        # the uncached result has the same (float16) precision
        assert np.array_equal(embed(teacher, ds, None, progress=False)[1], X) and c.n == 80
        # another image list
        embed(teacher, _ds(world, teacher, ids40[:39]), cache, progress=False)
        assert c.n == 80 + 39
        # another transform (no centre crop) of the same images
        embed(
            teacher,
            IAADataset(
                world / "images", ds_labels(world, ids40), eval_transform(32, teacher.mean, teacher.std, crop=False)
            ),
            cache,
            progress=False,
        )
        assert c.n == 80 + 39 + 40
        # a changed image file (same name)
        n = c.n
        f = world / "images" / f"{ids40[0]}.jpg"
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        embed(teacher, ds, cache, progress=False)
        assert c.n == n + 40
        embed(teacher, ds, cache, progress=False)
        assert c.n == n + 40
        # changed weights
        n = c.n
        for p, delta, calls in (
            (teacher.clip.visual.proj, 0.5, 40),
            (teacher.clip.text_projection, 1.0, 0),
        ):  # the text tower does not key image embeddings
            keep = p.detach().clone()
            with torch.no_grad():
                p.add_(delta)
            try:
                _, X2 = embed(teacher, ds, cache, progress=False)
            finally:
                with torch.no_grad():
                    p.copy_(keep)
            n += calls
            assert c.n == n and np.allclose(X2, X) == (calls == 0)
        embed(teacher, ds, cache, progress=False)  # restored weights: the first entry again
        assert c.n == n
    finally:
        c.h.remove()
    files = sorted(p.name for p in cache.iterdir())
    assert {os.path.splitext(p)[1] for p in files} == {".json", ".npy"}  # atomic writes leave no temp files
    assert len([p for p in files if p.endswith(".npy")]) == len([p for p in files if p.endswith(".json")]) == 5
    man = json.loads(next(cache.glob("*.json")).read_text())
    assert set(man["key"]) == {"format", "model", "weights", "transform", "images", "n_images", "precision"}
    assert man["key"]["model"] == TEST_CLIP and man["key"]["weights"].startswith("hash:")
    assert all(np.load(f).dtype == np.float16 for f in cache.glob("*.npy"))


def ds_labels(world, ids):
    return read_ava(world / "AVA.txt").set_index("image_id", drop=False).loc[ids].reset_index(drop=True)


def test_weights_key_by_file_or_tag_and_corrupt_cache(tmp_path, world, teacher):
    ds = _ds(world, teacher, read_ava(world / "AVA.txt").image_id[:12].tolist())
    w = tmp_path / "weights.safetensors"
    w.write_bytes(b"x" * 10)
    c = _Counter(teacher.clip.visual)
    try:
        embed(teacher, ds, tmp_path / "c", weights=w, progress=False)
        embed(teacher, ds, tmp_path / "c", weights=w, progress=False)
        assert c.n == 12
        time.sleep(0.01)
        w.write_bytes(b"y" * 11)  # the weights file changed: size and mtime
        embed(teacher, ds, tmp_path / "c", weights=w, progress=False)
        assert c.n == 24
        embed(teacher, ds, tmp_path / "c", weights="laion2b_s34b_b79k", progress=False)
        embed(teacher, ds, tmp_path / "c", weights="laion2b_s34b_b79k", progress=False)
        assert c.n == 36
        for m in (tmp_path / "c").glob("*.json"):
            m.write_text("{not json")
        with pytest.warns(RuntimeWarning, match="unreadable"):
            embed(teacher, ds, tmp_path / "c", weights=w, progress=False)
        assert c.n == 48
    finally:
        c.h.remove()
    assert weights_fingerprint(teacher.clip.visual) == weights_fingerprint(teacher.clip.visual)


def test_unreadable_images_are_skipped(tmp_path, world, teacher):
    import shutil

    imgs = tmp_path / "images"
    shutil.copytree(world / "images", imgs)
    ids = read_ava(world / "AVA.txt").image_id[:10].tolist()
    (imgs / f"{ids[3]}.jpg").write_bytes(b"not a jpeg")
    ds = IAADataset(imgs, ds_labels(world, ids), eval_transform(32, teacher.mean, teacher.std), on_error="skip")
    with pytest.warns(UserWarning):
        got, X = embed(teacher, ds, tmp_path / "c", progress=False)
    assert got == ids[:3] + ids[4:] and X.shape == (9, 32)
    y = dataset_targets(ds, got)
    np.testing.assert_allclose(y, ds_labels(world, got)["mean"], rtol=1e-6)


def test_embeddings_of_timm_and_clip_encoders(tmp_path, world):
    ids = read_ava(world / "AVA.txt").image_id[:8].tolist()
    for model, dim in [(encoder("resnet18", img_size=32), 512), (build_encoder(f"clip:{TEST_CLIP}"), 64)]:
        model.train()
        ds = _ds(world, model, ids)
        got, X = embed(model, ds, tmp_path / "c", progress=False)
        assert X.shape == (8, dim) and np.isfinite(X).all()
        assert model.training  # mode restored
        with torch.no_grad():
            model.eval()
            ref = model(torch.stack([ds[i][0] for i in range(8)])).numpy()
        np.testing.assert_allclose(X, ref, rtol=2e-3, atol=2e-3)
    with pytest.raises(TypeError, match="needs `.paths`"):
        embed(
            model, torch.utils.data.TensorDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2)), tmp_path, progress=False
        )


# ---------------------------------------------------------------- end to end


def test_probe_backbones_on_a_toy_world(tmp_path, world, teacher):
    results = {}
    for model in (teacher, encoder("resnet18", img_size=32)):
        splits = probe_datasets(model, world)
        m, pred, probe = probe_backbone(
            model, splits, tmp_path / "cache", folds=3, progress=False, alphas=np.logspace(-2, 5, 8)
        )
        results[m["model"]] = m
        assert len(pred) == 200 and set(pred.split) == {"train", "val", "test"}
        for s in ("train", "val", "test"):
            for k in ("srcc", "plcc", "acc"):
                assert np.isfinite(m[f"{s}_{k}"]), (m["model"], s, k)
        assert m["n_train"] == len(splits["train"]) == 140 and probe.alpha in np.logspace(-2, 5, 8)
        # the predictions table reproduces the reported test metrics
        t = pred[pred.split == "test"]
        from cskd.metrics import srcc

        assert srcc(t.pred_mean, t.true_mean) == pytest.approx(m["test_srcc"])
        # same protocol, same images for both backbones
        assert sorted(t.image_id) == sorted(splits["test"].ids)
    assert set(results) == {TEST_CLIP, "resnet18"}
    assert results[TEST_CLIP]["dim"] == 32 and results["resnet18"]["dim"] == 512
    with pytest.raises(KeyError, match="train_split='training'"):
        probe_backbone(teacher, probe_datasets(teacher, world), train_split="training", progress=False)
