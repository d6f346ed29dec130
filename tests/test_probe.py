"""cskd.probe: closed-form fits against numpy references, the embedding cache with real models and JPEGs, and an
end-to-end probe of a CLIP and a timm backbone on a toy world."""

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from cskd.data import IAADataset, eval_transform, read_ava
from cskd.models import TEST_CLIP, build_encoder, clip_teacher, encoder
from cskd.probe import (
    ALPHAS,
    LinearProbe,
    Standardizer,
    cv_ridge,
    dataset_targets,
    embed,
    fit_probe,
    linear_probe,
    probe_backbone,
    probe_datasets,
    ridge_path,
    weights_hash,
)
from cskd.toy import make_toy_world


# ---------------------------------------------------------------- closed-form fits


def _data(n, d, noise, seed=0, k=None):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d) + rng.normal(size=d) * 3
    w = np.zeros(d)
    w[: (k or d)] = rng.normal(size=k or d)
    return X, X @ w + 5 + noise * rng.normal(size=n)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ols_matches_lstsq(seed):
    X, y = _data(80, 6, 0.5, seed)
    _, pred, probe = linear_probe(X[:60], y[:60], X[60:], method="ols")
    A = np.column_stack([X[:60], np.ones(60)])
    coef = np.linalg.lstsq(A, y[:60], rcond=None)[0]
    np.testing.assert_allclose(pred, np.column_stack([X[60:], np.ones(20)]) @ coef, rtol=1e-9, atol=1e-9)
    assert probe.alpha == 0 and probe.method == "ols" and probe.cv is None
    # the probe's coefficients on standardised features map back to lstsq's raw ones
    np.testing.assert_allclose(probe.coef / probe.standardizer.scale, coef[:6], rtol=1e-8)


def test_ols_with_more_features_than_samples_is_minimum_norm():
    rng = np.random.default_rng(3)
    Z = rng.normal(size=(10, 30))
    y = rng.normal(size=10)
    w = ridge_path(Z, y, [0.0])[:, 0]
    np.testing.assert_allclose(w, np.linalg.lstsq(Z, y, rcond=None)[0], atol=1e-10)
    np.testing.assert_allclose(Z @ w, y, atol=1e-9)  # interpolates


def test_ridge_closed_form_and_limits():
    X, y = _data(50, 8, 1.0)
    Z = Standardizer().fit_transform(X)
    yc = y - y.mean()
    alphas = [0.0, 1e-10, 0.3, 10.0, 1e3, 1e9]
    W = ridge_path(Z, yc, alphas)
    for j, a in enumerate(alphas[2:5], 2):
        np.testing.assert_allclose(W[:, j], np.linalg.solve(Z.T @ Z + a * np.eye(8), Z.T @ yc), rtol=1e-8)
    np.testing.assert_allclose(W[:, 1], W[:, 0], rtol=1e-6)  # alpha -> 0 equals OLS
    norms = np.linalg.norm(W, axis=0)
    assert np.all(np.diff(norms) < 0)  # larger alpha shrinks
    assert norms[-1] < 1e-5 * norms[0]
    # a huge penalty predicts the training mean
    probe = fit_probe(X, y, alphas=[1e12])
    np.testing.assert_allclose(probe.predict(X), y.mean(), atol=1e-6)


def test_standardizer_fits_on_train_only():
    rng = np.random.default_rng(0)
    tr, te = rng.normal(2, 3, size=(100, 4)), rng.normal(10, 1, size=(20, 4))
    tr[:, 3] = 7.0  # a constant feature
    st = Standardizer().fit(tr)
    Z = st.transform(tr)
    np.testing.assert_allclose(Z[:, :3].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z[:, :3].std(0), 1, atol=1e-12)
    np.testing.assert_allclose(Z[:, 3], 0)
    np.testing.assert_allclose(st.transform(te), (te - tr.mean(0)) / np.where(tr.std(0) > 0, tr.std(0), 1))
    assert st.transform(te)[:, 0].mean() > 1  # test data keeps its shift: no refit on test
    with pytest.raises(ValueError, match="fitted on 4 features"):
        st.transform(te[:, :2])
    with pytest.raises(ValueError, match="non-finite"):
        Standardizer().fit(np.array([[1.0, np.nan]]))


def test_cv_picks_a_sensible_alpha():
    # few features, much data, little noise: almost no shrinkage is best
    X, y = _data(400, 5, 0.1, seed=1)
    with pytest.warns(RuntimeWarning, match="edge of the grid"):  # the smallest alpha wins here
        p = fit_probe(X, y, alphas=np.logspace(-3, 5, 17))
    assert p.alpha <= 1.0, p.alpha
    assert p.cv.mse.min() == pytest.approx(0.1**2, rel=0.5)  # CV error estimates the noise variance
    # many irrelevant features, strong noise: heavy shrinkage wins and beats OLS out of sample
    X, y = _data(200, 80, 3.0, seed=2, k=2)
    Xte, yte = _data(2000, 80, 3.0, seed=2, k=2)  # same seed: same weights and feature scales
    p = fit_probe(X, y, alphas=np.logspace(-3, 5, 17))
    assert p.alpha >= 10, p.alpha
    ols = fit_probe(X, y, method="ols")
    assert np.mean((p.predict(Xte) - yte) ** 2) < np.mean((ols.predict(Xte) - yte) ** 2)
    cv = cv_ridge(X, y, [0.1, 1e3], folds=4, seed=0)
    assert list(cv.columns) == ["alpha", "mse", "mse_sd"] and len(cv) == 2
    pd.testing.assert_frame_equal(cv, cv_ridge(X, y, [0.1, 1e3], folds=4, seed=0))  # seeded


def test_edge_of_grid_warns_and_bad_arguments_fail():
    X, y = _data(100, 3, 0.01)
    with pytest.warns(RuntimeWarning, match="edge of the grid"):
        fit_probe(X, y, alphas=[1e2, 1e3, 1e4])
    with pytest.raises(ValueError, match="`alphas`"):
        fit_probe(X, y, alphas=[-1.0, 1.0])
    with pytest.raises(ValueError, match="`folds`"):
        fit_probe(X, y, folds=500)
    with pytest.raises(ValueError, match="`y` has 99 values for 100 rows"):
        fit_probe(X, y[:-1])
    with pytest.raises(ValueError, match="method='lasso'"):
        linear_probe(X, y, X, y, method="lasso")
    m, pred, probe = linear_probe(X, y, X[:7])
    assert isinstance(probe, LinearProbe) and pred.shape == (7,) and "srcc" not in m and m["alpha"] in ALPHAS


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
    assert not [p for p in files if p.endswith(".tmp")]  # atomic writes leave no temp files
    assert len([p for p in files if p.endswith(".npy")]) == len([p for p in files if p.endswith(".json")]) == 5
    man = json.loads(next(cache.glob("*.json")).read_text())
    assert set(man["key"]) == {"format", "model", "weights", "transform", "images", "n_images"}
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
    assert weights_hash(teacher.clip.visual) == weights_hash(teacher.clip.visual)


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
