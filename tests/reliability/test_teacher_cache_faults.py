"""A teacher-feature cache whose file was truncated, or that another teacher built: `ensure_teacher_cache`
rebuilds it and says why; `TeacherCache.load` (no rebuild) raises `CacheError` naming the file."""

import pytest
import torch
from PIL import Image

from cskd.models import TEST_CLIP, clip_teacher
from cskd.teacher_cache import CacheError, TeacherCache, cache_key, ensure_teacher_cache
from cskd.views import SeededView


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    d = tmp_path_factory.mktemp("pool")
    g = torch.Generator().manual_seed(0)
    for i in range(6):
        Image.fromarray((torch.rand(40, 48, 3, generator=g) * 255).byte().numpy()).save(d / f"{i}.jpg")
    return sorted(d.glob("*.jpg"))


def test_truncated_cache_is_rebuilt_or_refused(pool, tmp_path, capsys):
    torch.manual_seed(0)
    teacher = clip_teacher(TEST_CLIP)
    view, path = SeededView(32), tmp_path / "cache"
    c = ensure_teacher_cache(path, teacher, pool, view, views=2, progress=False)
    good = torch.from_numpy(c.open()[:].copy())
    f = path / "features.npy"
    size = f.stat().st_size
    with open(f, "r+b") as fh:
        fh.truncate(size - 100)  # a copy cut short, a full disk...
    with pytest.raises(CacheError) as e:
        TeacherCache.load(path)
    assert str(e.value) == f"teacher cache {path}: {f} is truncated or damaged: {size - 100} bytes, expected {size}"
    capsys.readouterr()
    c2 = ensure_teacher_cache(path, teacher, pool, view, views=2, progress=False)
    assert f"teacher cache {path}: building, because {f} is truncated or damaged" in capsys.readouterr().out
    assert c2.built_because.startswith(f"{f} is truncated") and f.stat().st_size == size
    assert torch.equal(torch.from_numpy(c2.open()[:].copy()), good)  # rebuilt to the same content


def test_cache_of_another_teacher_is_rebuilt_or_refused(pool, tmp_path, capsys):
    view, path = SeededView(32), tmp_path / "cache"
    torch.manual_seed(0)
    a = clip_teacher(TEST_CLIP)
    ensure_teacher_cache(path, a, pool, view, views=2, progress=False)
    torch.manual_seed(1)
    b = clip_teacher(TEST_CLIP)  # same name, other weights
    with pytest.raises(
        CacheError,
        match=r"it was made for another teacher_weights \(cache: \"[0-9a-f]{40}\", wanted: \"[0-9a-f]{40}\"\)",
    ):
        TeacherCache.load(path, cache_key(b, pool, view, 2, precision="fp32"))
    capsys.readouterr()
    c = ensure_teacher_cache(path, b, pool, view, views=2, progress=False)
    assert c.manifest["complete"]
    out = capsys.readouterr().out
    assert f"teacher cache {path}: building, because it was made for another teacher_weights" in out
    assert TeacherCache.check(path, cache_key(b, pool, view, 2, precision="fp32")) is None  # now b's cache
    assert "teacher_weights" in TeacherCache.check(path, cache_key(a, pool, view, 2, precision="fp32"))
