"""Tar shards against files: phase 1's view of the same AVA-sized JPEGs read from image files or from tar shards
(`cskd.shards`), same decode, same crop, in the pool's shuffled order.

Images: `bench/data_path.py`'s AVA-sized JPEGs made from scikit-image's photographs (about 800 x 600,
quality 90), written once as shards by `cskd.shard_writer.write_shards` (what `cskd shards` does; the images'
own bytes, not resized; not timed). The folder pool and the shard pool hold the same images in the same order.

Rows (one image per call, single process and one torch thread, as one data-loader worker does):
- read: the image's bytes only (`cskd.images.read_image_bytes`): a file's `open` + `read` + `close`, or one
  `pread` in a shard the process keeps open.
- view: what phase 1's loader workers do (`cskd.views.SeededView(224, draft_factor=1.0)` of `load_image`).
And the pool's construction (`cskd.data.UnlabeledPool`): listing the folder, reading the shards' headers (the
first time), reading their kept index (every later time).

Each row reads all images once per repeat, in a random order (as the sampler does), the rows alternating
within every repeat (in reverse order every other repeat); `--reps` repeats after a warm-up; medians. The
files are in the page cache, as the shards are: this measures what the CPU pays, not a network file system's
per-file round trips (see BENCHMARKS.md).
The last line is `ratio: <shard view images/s / file view images/s>` (target: about 1, no loss).
Usage: python bench/shards.py [--per-photo 4] [--reps 5] [--copies 4]
"""

import argparse, os, random, shutil, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from cskd.data import UnlabeledPool
from cskd.images import load_image, read_image_bytes
from cskd.shard_writer import write_shards
from cskd.views import SeededView, view_seed
from data_path import make_jpegs  # the same AVA-sized JPEGs as bench/data_path.py


def pools(folder: Path, shards: Path) -> tuple:
    "The images of the folder pool and of the shard pool written from it; seconds to build each pool."
    t0 = time.perf_counter()
    by_files = UnlabeledPool(folder)
    t1 = time.perf_counter()
    manifest = write_shards(folder, shards, shard_size=64, progress=False)
    os.environ["CSKD_SHARD_INDEX"] = str(shards.parent / "index")  # a new index folder: the first build reads headers
    t2 = time.perf_counter()
    by_shards = UnlabeledPool(shards / manifest["pattern"])
    t3 = time.perf_counter()
    UnlabeledPool(shards / manifest["pattern"])
    t4 = time.perf_counter()
    assert by_files.ids == by_shards.ids
    n = len(by_files)
    return (
        by_files.paths,
        by_shards.paths,
        dict(files=t1 - t0, headers=t3 - t2, index=t4 - t3, n=n, shards=len(manifest["shards"])),
    )


def rows(files: list, refs: list) -> dict:
    view = SeededView(224, draft_factor=1.0)

    def as_view(paths):
        return lambda i: view(load_image(paths[i], view.draft_size), view_seed(0, i, 0))

    return {
        "read, files": lambda i: read_image_bytes(files[i]),
        "read, shards": lambda i: read_image_bytes(refs[i]),
        "view, files": as_view(files),
        "view, shards": as_view(refs),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-photo", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--copies", type=int, default=4, help="copies of each JPEG (more images, same decode cost each)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "photos").mkdir()
        (d / "images").mkdir()
        for f in make_jpegs(d / "photos", args.per_photo):
            for c in range(args.copies):
                shutil.copy(f, d / "images" / f"{f.stem}_{c}.jpg")
        files, refs, listing = pools(d / "images", d / "shards")
        sizes = [Path(f).stat().st_size for f in files]
        print(
            f"{listing['n']} JPEGs (mean {np.mean(sizes) / 1024:.0f} KiB) as files and as {listing['shards']} shards; "
            f"pool built in {listing['files'] * 1e3:.1f} ms from the folder, {listing['headers'] * 1e3:.1f} ms from "
            f"the shards' headers, {listing['index'] * 1e3:.1f} ms from their kept index"
        )
        fns = rows(files, refs)
        for f in fns.values():  # warm-up: page cache, open shards
            for i in range(len(files)):
                f(i)
        rates, rng = {k: [] for k in fns}, random.Random(0)
        for rep in range(args.reps):
            order = rng.sample(range(len(files)), len(files))
            for name, f in list(fns.items())[:: -1 if rep % 2 else 1]:  # the rows' order alternates too
                t0 = time.perf_counter()
                for i in order:
                    f(i)
                rates[name].append(len(files) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\n{'row':16s} {'images/s':>10s} {'min':>10s} {'max':>10s} {'x files':>8s}")
    for k, v in rates.items():
        base = med[k.split(",")[0] + ", files"]
        print(f"{k:16s} {med[k]:10.1f} {min(v):10.1f} {max(v):10.1f} {med[k] / base:8.2f}")
    print(f"ratio: {med['view, shards'] / med['view, files']:.3f}")


if __name__ == "__main__":
    sys.exit(main())
