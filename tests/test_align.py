"""Phase 1 (cskd.align) and its teacher-feature cache end to end: real toy JPEGs, real open_clip / timm
models (tiny, random init), real run folders, the experiment notebook through papermill."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cskd.align import AlignConfig, align, align_cache, align_config, align_pool, cache_recipe
from cskd.config import ConfigError, load_config
from cskd.iaa import build_iaa_model, finetune_config, finetune
from cskd.models import TEST_CLIP, clip_teacher
from cskd.kernels import PAPERMILL_KERNEL
from cskd.teacher_cache import PoolViews, TeacherCache, teacher_targets
from cskd.views import SeededView
from cskd.toy import make_toy_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 100, workers=1)


def tiny(toy, run_dir, **kw):
    base = dict(
        pool_sources=[str(toy / "images")],
        exclude_split=str(toy / "splits" / "test.txt"),
        teacher=TEST_CLIP,
        image_size=32,
        batch_size=16,
        epochs=2,
        lr=2e-3,
        warmup_epochs=0.0,
        eval_images=32,
        progress=False,
        log_every=1,
        run_dir=str(run_dir),
    )
    return align_config(**{**base, **kw})


def test_pool_excludes_test_split_unless_asked(toy):
    test_ids = set((toy / "splits" / "test.txt").read_text().split())
    cfg = tiny(toy, None)
    pool = align_pool(cfg)
    assert len(pool) == 100 - len(test_ids) and not test_ids & set(pool.ids)
    assert len(align_pool(tiny(toy, None, include_test=True))) == 100
    with pytest.raises(ConfigError, match="'pool_sources'"):
        align_pool(tiny(toy, None, pool_sources=[str(toy / "nope")]))


def test_alignment_lowers_loss_and_iaa_inits_from_run(toy, tmp_path):
    cfg = tiny(toy, tmp_path / "run")
    r = align(cfg)
    assert r["eval_loss_after"] < 0.7 * r["eval_loss_before"], r
    assert r["final_loss"] < r["first_loss"], r
    assert r["eval_cosine_after"] > r["eval_cosine_before"], r
    assert (tmp_path / "run" / "results.json").exists() and (tmp_path / "run" / "pool.txt").read_text().count(
        "\n"
    ) == r["pool_images"]
    # the IAA phase takes the aligned encoder from the run folder
    sd = load_file(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    fcfg = finetune_config(
        data_root=str(toy),
        encoder=cfg.student,
        image_size=32,
        init=str(tmp_path / "run"),
        epochs=1,
        batch_size=16,
        progress=False,
        run_dir=str(tmp_path / "ft"),
        eval_batch_size=64,
    )
    m = build_iaa_model(fcfg)
    for k, v in m.encoder.state_dict().items():
        torch.testing.assert_close(v, sd["encoder." + k], msg=k)
    res = finetune(fcfg)
    assert np.isfinite(res["test_srcc"])


def test_cached_targets_match_online_teacher_and_cache_is_reused(toy, tmp_path, capsys):
    cfg = tiny(toy, tmp_path / "run", cache=True, cache_views=2, cache_dir=str(tmp_path / "cache"))
    r = align(cfg)
    assert r["eval_loss_after"] < 0.7 * r["eval_loss_before"], r
    assert "building, because no cache" in capsys.readouterr().out
    c = TeacherCache.load(tmp_path / "cache")
    paths = (tmp_path / "run" / "pool.txt").read_text().split()
    assert c.shape == (len(paths), 2, 32)
    torch.manual_seed(cfg.seed)  # align() builds its random-init teacher after seeding: the same teacher again
    teacher = clip_teacher(TEST_CLIP)
    ds = PoolViews(paths, SeededView(32, (cfg.min_scale, 1.0), draft_factor=cfg.draft_factor), cfg.view_seed, cache=c)
    feats = c.open()
    for i in (0, 7, len(paths) - 1):
        for k in (0, 1):
            online = teacher_targets(teacher, ds.view_of(i, k)[None])[0]
            torch.testing.assert_close(torch.from_numpy(np.array(feats[i, k])).float(), online, atol=3e-3, rtol=3e-3)
    # a second run reuses it; another teacher invalidates it, and the message says why
    align(tiny(toy, tmp_path / "run2", cache=True, cache_views=2, cache_dir=str(tmp_path / "cache"), epochs=1))
    assert "reusing" in capsys.readouterr().out
    align(tiny(toy, tmp_path / "run3", cache=True, cache_views=2, cache_dir=str(tmp_path / "cache"), epochs=1, seed=1))
    assert "building, because it was made for another teacher_weights" in capsys.readouterr().out


def test_align_cache_builds_what_align_then_reads(toy, tmp_path, capsys):
    "The pipeline builds a cache with align_cache before the phase-1 runs that share it start."
    cfg = tiny(toy, tmp_path / "run", cache=True, cache_views=2, cache_dir=str(tmp_path / "cache"), epochs=1)
    c = align_cache(cfg)
    assert "building, because no cache" in capsys.readouterr().out
    r = align(cfg)
    assert "reusing" in capsys.readouterr().out and c.shape[:2] == (r["pool_images"], 2)
    with pytest.raises(ConfigError, match="'cache' is false"):
        align_cache(tiny(toy, None))
    # what decides the content: views and pool yes, training settings no; a random teacher's seed too
    assert cache_recipe(dataclasses.replace(cfg, lr=1.0, epochs=9, student="resnet18")) == cache_recipe(cfg)
    assert cache_recipe(dataclasses.replace(cfg, min_scale=0.5)) != cache_recipe(cfg)
    assert cache_recipe(dataclasses.replace(cfg, seed=1)) != cache_recipe(cfg)
    given = dataclasses.replace(cfg, teacher_pretrained=str(tmp_path / "w.safetensors"))
    assert cache_recipe(dataclasses.replace(given, seed=1)) == cache_recipe(given)


def test_tokens_granularity_with_a_cnn_student(toy, tmp_path):
    r = align(tiny(toy, tmp_path / "run", student="resnet18", granularity="tokens", loss="cosine"))
    assert r["eval_loss_after"] < r["eval_loss_before"], r


def test_epoch_reaches_persistent_workers(toy, tmp_path):
    "set_epoch in the main process changes the views that persistent data-loader workers produce."
    paths = sorted((toy / "images").glob("*.jpg"))[:8]
    teacher = clip_teacher(TEST_CLIP)
    from cskd.teacher_cache import ensure_teacher_cache

    c = ensure_teacher_cache(tmp_path / "c", teacher, paths, SeededView(32), views=4, progress=False)
    ds = PoolViews(paths, SeededView(32), cache=c, seed=3)
    dl = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, persistent_workers=True)
    feats = c.open()
    for epoch in range(3):
        ds.set_epoch(epoch)
        x, t, idx = next(iter(dl))
        ks = [ds.view_index(int(i), epoch) for i in idx]
        assert torch.equal(t, torch.from_numpy(np.stack([feats[int(i), k] for i, k in zip(idx, ks)])))
        assert torch.equal(x[0], ds.view_of(int(idx[0]), ks[0]))
    assert len({tuple(ds.view_index(i, e) for i in range(8)) for e in range(3)}) > 1


@pytest.mark.parametrize("name", ["align_ava_vitb16_to_vits16.yaml", "align_ava_vitb16_to_resnet50.yaml"])
def test_real_scale_configs_validate(name):
    cfg = load_config(AlignConfig, ROOT / "configs" / name)
    assert (
        cfg.teacher == "ViT-B-16" and cfg.image_size == 224 and cfg.batch_size == 256 and cfg.student_pretrained is True
    )
    assert cfg.precision == "auto" and cfg.num_workers == 8 and cfg.loss == "fd"


def test_experiment_notebook_runs_and_validates(tmp_path):
    import json
    import papermill as pm

    nb = ROOT / "nbs" / "experiments" / "align.ipynb"
    run = tmp_path / "run"
    make_toy_world(tmp_path / "toy", 240, workers=1)  # a toy world is written only at the default data/toy
    pm.execute_notebook(
        str(nb),
        str(tmp_path / "out.ipynb"),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=dict(run_dir=str(run), data_root=str(tmp_path / "toy"), epochs=2, eval_images=32, batch_size=32),
    )
    m = json.loads((run / "metrics.json").read_text())
    for k in ("first_loss", "final_loss", "eval_loss_before", "eval_loss_after", "steps", "pool_images"):
        assert k in m, k
    assert m["eval_loss_after"] < m["eval_loss_before"]
    assert (run / "figures" / "align_loss.png").stat().st_size > 5000
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(
            str(nb),
            str(tmp_path / "bad.ipynb"),
            cwd=str(ROOT),
            **PAPERMILL_KERNEL,
            progress_bar=False,
            parameters=dict(run_dir=str(tmp_path / "bad"), data_root=str(tmp_path / "toy"), loss="fdd"),
        )
    assert "'loss'" in str(e.value) and "fdd" in str(e.value)
