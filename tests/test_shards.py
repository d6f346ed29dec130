"""Tar shards as the unlabeled pool, end to end (issue 29): shards written by `cskd shards` from the toy world
and img2dataset-style shards built by hand; phase 1 from shards is the run from the folder, bit for bit; two
ranks (torchrun, gloo) with data workers read disjoint samples that cover the pool; a damaged member is skipped
and named; a run killed mid-epoch resumes exactly."""

import io
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from cskd.align import align, align_config, align_pool
from cskd.models import TEST_CLIP
from cskd.toy import make_toy_world
from cskd_cli import cskd

sys.path.insert(0, str(Path(__file__).parent / "reliability"))
from relutil import ENV, assert_same, kill, wait_for, weights  # the reliability suite's process helpers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 100, workers=1)


@pytest.fixture(scope="module")
def shards(toy):
    "The toy world's images as 4 shards written by `python -m cskd shards`; the pool-source pattern it printed."
    out = toy.parent / "shards"
    p = cskd("shards", toy / "images", "--out", out, "--shard-size", 30, "--no-progress")
    assert p.returncode == 0, p.stderr
    assert "100 images in 4 shard(s)" in p.stdout
    return re.search(r"^pool source: (.+)$", p.stdout, re.M)[1]


def tiny(toy, pool_source, run_dir, **kw):
    base = dict(
        pool_sources=[str(pool_source)],
        exclude_split=str(toy / "splits" / "test.txt"),
        teacher=TEST_CLIP,
        image_size=32,
        batch_size=16,
        epochs=1,
        lr=2e-3,
        warmup_epochs=0.0,
        eval_images=16,
        progress=False,
        log_every=1,
        run_dir=str(run_dir) if run_dir else None,
    )
    return align_config(**{**base, **kw})


def test_phase1_from_shards_is_the_run_from_the_folder(toy, shards, tmp_path):
    folder_pool, shard_pool = align_pool(tiny(toy, toy / "images", None)), align_pool(tiny(toy, shards, None))
    assert shard_pool.ids == folder_pool.ids and len(shard_pool) == 80  # the test split excluded by key
    assert all("#" in p for p in shard_pool.paths)
    by_folder = align(tiny(toy, toy / "images", tmp_path / "folder"))
    by_shards = align(tiny(toy, shards, tmp_path / "shards"))
    assert by_shards["eval_loss_after"] < by_shards["eval_loss_before"], by_shards
    assert by_shards["eval_loss_after"] == by_folder["eval_loss_after"]
    assert_same(weights(tmp_path / "shards"), weights(tmp_path / "folder"))  # same images, order and views
    pool_txt = (tmp_path / "shards" / "pool.txt").read_text().splitlines()
    assert pool_txt[0].startswith(str(Path(shards).parent / "shard-00000.tar#"))


def _member(tf, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def img2dataset_shards(toy, folder: Path, per_shard: int, damaged: int) -> list:
    """Shards as img2dataset writes them (`00000.tar`, ...; per sample `KEY.jpg`, `KEY.json`, `KEY.txt`, keys of
    9 digits), from the toy world's images, the image of key `damaged` cut short; the keys."""
    folder.mkdir()
    images, keys = sorted((toy / "images").glob("*.jpg")), []
    for s in range(0, len(images), per_shard):
        with tarfile.open(folder / f"{s // per_shard:05d}.tar", "w") as tf:
            for n, image in enumerate(images[s : s + per_shard], start=s):
                key, data = f"{n:09d}", image.read_bytes()
                _member(tf, f"{key}.jpg", data[:300] if n == damaged else data)
                meta = dict(key=key, status="success", url=f"http://example.org/{image.name}", width=64, height=64)
                _member(tf, f"{key}.json", json.dumps(meta).encode())
                _member(tf, f"{key}.txt", b"a toy photograph")
                keys.append(key)
    return keys


def test_img2dataset_shards_as_they_are_with_a_damaged_member(toy, tmp_path):
    keys = img2dataset_shards(toy, tmp_path / "web", per_shard=40, damaged=42)
    source = tmp_path / "web" / "{00000..00002}.tar"
    cfg = tiny(toy, source, tmp_path / "run", include_test=True, eval_images=0, batch_size=20)
    assert align_pool(cfg).ids == keys
    damaged = f"{tmp_path / 'web' / '00001.tar'}#000000042.jpg"
    with pytest.warns(UserWarning, match=re.escape(f"skipping bad image {damaged}: truncated image file")):
        r = align(cfg)
    assert r["bad_images"] == 1 and r["steps"] == 5


def torchrun(script, args, nproc=2, timeout=300):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--standalone", str(script)]
    p = subprocess.run([*cmd, *map(str, args)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_two_ranks_read_disjoint_samples_that_cover_the_pool(toy, shards):
    out = torchrun(ROOT / "tests" / "shards_worker.py", [shards, toy / "splits" / "test.txt", 16])
    (first0, again0), (first1, again1) = out["ranks"]
    assert len(out["pool"]) == 80 and len(first0) == len(first1) == 40  # 5 steps x 8 images per rank
    assert not set(first0) & set(first1) and sorted(first0 + first1) == sorted(out["pool"])
    assert (first0, first1) == (again0, again1)  # the order is a function of the seed and the epoch
    assert first0 != sorted(first0)  # and shuffled across the shards


@pytest.mark.slow
def test_kill_mid_epoch_then_resume_is_exact(toy, shards, tmp_path):
    flags = [
        "--pool-sources", shards, "--exclude-split", toy / "splits" / "test.txt", "--teacher", TEST_CLIP,
        "--image-size", 32, "--batch-size", 16, "--epochs", 3, "--lr", 2e-3, "--warmup-epochs", 0,
        "--eval-images", 0, "--progress", "false", "--ckpt-every", 1, "--num-workers", 1,
    ]  # fmt: skip
    ref = cskd("align", *flags, "--run-dir", tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    cmd = [sys.executable, "-m", "cskd", "align", *map(str, flags), "--run-dir", str(tmp_path / "run")]
    p = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    wait_for(tmp_path / "run" / "checkpoints" / "last" / "state.pt", p)
    kill(p)
    killed_at = torch.load(tmp_path / "run" / "checkpoints" / "last" / "state.pt", weights_only=True)["global_step"]
    assert killed_at < 15  # 3 epochs x 5 steps: the kill came mid-run
    res = cskd("align", *flags, "--run-dir", tmp_path / "run")
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout[res.stdout.index("{") :])["steps"] == 15
    assert_same(weights(tmp_path / "run"), weights(tmp_path / "ref"))  # exact: no sample seen twice or skipped


def test_bad_shard_sources_stop_before_anything_is_written(toy, shards, tmp_path):
    missing = cskd("align", "--pool-sources", tmp_path / "x-{0000..0003}.tar", "--run-dir", tmp_path / "run")
    assert missing.returncode == 2 and f"{tmp_path / 'x-0000.tar'} is not a file" in missing.stderr
    assert "cskd shards" in missing.stderr and not (tmp_path / "run").exists()
    twice = cskd("shards", shards, toy / "images", "--out", tmp_path / "out", "--no-progress")
    assert twice.returncode == 2 and "duplicate key" in twice.stderr and "shard-00000.tar#" in twice.stderr
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


def test_gpu_decode_path_takes_the_jpeg_bytes_from_the_shards(toy, shards):
    from cskd.gpu_decode import pool_dataset
    from cskd.views import SeededView

    pool = align_pool(tiny(toy, shards, None))
    ds, collate = pool_dataset("gpu", pool.paths, SeededView(32))
    batch, indices = collate([ds[i] for i in range(4)])
    assert all(it.data is not None for it in batch.items)  # the shard's JPEG bytes, not the CPU path's fallback
    views, keep = batch.decode("cpu")  # what the training step does on its device
    assert views.shape == (4, 3, 32, 32) and keep.all() and indices.tolist() == [0, 1, 2, 3]
