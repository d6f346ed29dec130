"Integration tests of cskd.toy_pretrain: tiny real trainings on a real toy world, the cache, and loading."

import json
import math

import open_clip
import pytest
import torch
from safetensors.torch import load_file

from cskd.models import TOY_CLIP, build_encoder, clip_teacher
from cskd.toy_pretrain import cache_root, clip_loss_on, pretrain_world, toy_clip, toy_imagenet


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cskd-cache")


@pytest.fixture(scope="module")
def clip_file(cache):
    return toy_clip(n_images=32, epochs=5, batch_size=16, cache_dir=cache, progress=False)


def test_pretrain_world_is_disjoint_from_iaa_worlds(cache):
    w = pretrain_world(32, 0, cache)
    assert '"seed": 1000' in (w / "world.json").read_text()
    import cskd.toy as toy

    iaa = toy.make_toy_world(cache / "iaa", 32, seed=0)
    assert (w / "images" / "1.jpg").read_bytes() != (iaa / "images" / "1.jpg").read_bytes()
    assert (w / "captions.tsv").read_text() != (iaa / "captions.tsv").read_text()


def test_toy_clip_trains_and_loads(cache, clip_file):
    assert clip_file.exists() and clip_file.parent == cache and clip_file.suffix == ".safetensors"
    assert not list(cache.glob(".*.tmp"))  # atomic write left no temporary file
    teacher = clip_teacher(TOY_CLIP, pretrained=str(clip_file))
    world = pretrain_world(32, 0, cache)
    torch.manual_seed(0)  # the same random init the training started from
    before = clip_loss_on(open_clip.create_model(TOY_CLIP), world, 32)
    after = clip_loss_on(teacher.clip, world, 32)
    assert math.isfinite(before) and math.isfinite(after) and after < before
    out = teacher(torch.randn(2, 3, 64, 64))
    assert out.pooled.shape == (2, 128) and torch.isfinite(out.pooled).all()


def test_toy_clip_cache_reused(cache, clip_file):
    mtime = clip_file.stat().st_mtime_ns
    again = toy_clip(n_images=32, epochs=5, batch_size=16, cache_dir=cache, progress=False)
    assert again == clip_file and clip_file.stat().st_mtime_ns == mtime
    forced = toy_clip(n_images=32, epochs=5, batch_size=16, cache_dir=cache, progress=False, force=True)
    assert forced == clip_file and clip_file.stat().st_mtime_ns != mtime


def test_toy_clip_settings_change_the_file(cache, clip_file):
    other = toy_clip(n_images=32, epochs=1, batch_size=16, cache_dir=cache, progress=False)
    assert other != clip_file and other.exists()


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("CSKD_CACHE", str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    p = toy_clip(n_images=16, epochs=1, batch_size=8, progress=False)
    assert p.parent == tmp_path / "env" and p.exists()


def test_toy_imagenet_vit_loads_into_build_encoder(cache):
    path = toy_imagenet("vit_tiny_patch16_224", n_images=64, epochs=1, batch_size=16, cache_dir=cache, progress=False)
    sd = load_file(str(path))
    assert "head.weight" in sd  # the file keeps the classifier; timm's loader drops it for num_classes=0
    enc = build_encoder("vit_tiny_patch16_224", pretrained=str(path), image_size=64)
    msd = enc.model.state_dict()
    assert set(sd) - set(msd) == {"head.weight", "head.bias"} and all(torch.equal(sd[k], msd[k]) for k in msd)
    assert enc(torch.randn(2, 3, 64, 64)).shape == (2, 192)
    mtime = path.stat().st_mtime_ns
    assert (
        toy_imagenet("vit_tiny_patch16_224", n_images=64, epochs=1, batch_size=16, cache_dir=cache, progress=False)
        == path
        and path.stat().st_mtime_ns == mtime
    )
    assert (
        toy_imagenet("vit_tiny_patch16_224", n_images=64, epochs=2, batch_size=16, cache_dir=cache, progress=False)
        != path
    )


def test_toy_imagenet_learns_content(cache):
    path = toy_imagenet("resnet18", n_images=64, epochs=8, batch_size=16, cache_dir=cache, progress=False)
    losses = json.loads(path.with_suffix(".json").read_text())["loss"]  # the cache's card: one value per epoch
    assert all(math.isfinite(l) for l in losses) and losses[-1] < losses[0]


def test_bad_settings(cache):
    with pytest.raises(ValueError, match="epochs"):
        toy_clip(epochs=0, cache_dir=cache)
    with pytest.raises(ValueError, match="n_images"):
        toy_clip(n_images=5, cache_dir=cache)
    with pytest.raises(ValueError, match="not-a-model"):
        toy_imagenet("not-a-model", cache_dir=cache)
