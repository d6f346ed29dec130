"""Data path: decoding + augmenting AVA-sized JPEGs into 224 px training crops, ours against the plain
torchvision recipe, on the same cores.

Images: real photographs bundled with scikit-image (astronaut, chelsea, coffee, rocket, motorcycle,
hubble, retina, brick, grass, gravel...) resized/cropped to about 800 x 600 (AVA's typical size) and
re-encoded as JPEG quality 90, with several crops per photo; flat synthetic images would decode faster
and flatter the numbers.

Pipelines (one image per call, single process, as one data-loader worker does):
- plain: `PIL.Image.open(path).convert("RGB")`, `RandomResizedCrop(224)`, `ToTensor`, `Normalize`.
- cskd train_transform: `cskd.images.load_image(path, draft_size)` + `cskd.images.train_transform(224,
  draft_factor=1.0)`: JPEG draft-mode decoding at >= 224 px, i.e. an 800 x 600 JPEG decodes at 400 x 300
  (DCT-domain downscale by 2). With the default `draft_factor=2.0` (448 px) such an image is NOT reduced, so
  that row shows no decoding gain.
- cskd align view: what phase 1 uses (`cskd.views.SeededView(224, draft_factor=1.0)`): draft-mode
  decoding, crop + resize in one PIL call, flip, `uint8` tensor out; normalisation happens on the device in
  the training step, so it is not part of the worker's cost.
- cskd align view, pre-resized copy: the same view read from a one-off copy of each JPEG with its short
  side reduced to 256 px (quality 90; made once by `cskd.images.preresize_images`, i.e. `cskd preresize`,
  not timed). Decoding cost is mostly entropy decoding, proportional to the compressed size, which draft
  mode cannot reduce.
Quality trade-off of draft mode at factor 1.0: small crops (area near 8% of the image) are upsampled from
half-resolution pixels and look softer; crops of half the image or more lose almost nothing.

Each pipeline processes all images once per repeat; the pipelines alternate within every repeat
(interleaved), `--reps` repeats after a warm-up; we report the median images/s. `torch` runs with one
thread (as in a data-loader worker). The last line is `ratio: <cskd align view images/s / plain images/s>`
(target >= 2). Usage: python bench/data_path.py [--per-photo 4] [--reps 5]
"""

import argparse, statistics, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from cskd.images import load_image, preresize_images, train_transform
from cskd.views import SeededView, view_seed

PHOTOS = [
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "retina.jpg",
    "brick.png",
    "grass.png",
    "gravel.png",
    "color.png",
]
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def make_jpegs(folder: Path, per_photo: int, seed: int = 0) -> list:
    "AVA-sized JPEGs (about 800 x 600, quality 90) from real photos: random crops, resized, landscape and portrait."
    import skimage

    data = Path(skimage.__file__).parent / "data"
    rng, out = np.random.default_rng(seed), []
    for name in PHOTOS:
        if not (data / name).exists():
            continue
        im = Image.open(data / name).convert("RGB")
        for j in range(per_photo):
            w, h = im.size
            cw, ch = int(w * rng.uniform(0.7, 1.0)), int(h * rng.uniform(0.7, 1.0))
            l, t = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            size = (800, 600) if j % 3 else (600, 800)
            size = (size[0] + int(rng.integers(-40, 41)), size[1] + int(rng.integers(-30, 31)))
            p = folder / f"{Path(name).stem}_{j}.jpg"
            im.crop((l, t, l + cw, t + ch)).resize(size, Image.LANCZOS).save(p, quality=90)
            out.append(p)
    return out


def pipelines(small: dict):
    plain_tf = T.Compose([T.RandomResizedCrop(224), T.ToTensor(), T.Normalize(MEAN, STD)])

    def plain(p, i):
        with Image.open(p) as im:
            return plain_tf(im.convert("RGB"))

    ours_tf = train_transform(224, MEAN, STD, scale=(0.08, 1.0), draft_factor=1.0)

    def ours_train(p, i):
        return ours_tf(load_image(p, ours_tf.draft_size))

    view = SeededView(224, draft_factor=1.0)

    def ours_view(p, i):
        return view(load_image(p, view.draft_size), view_seed(0, i, 0))

    def ours_small(p, i):
        return view(load_image(small[p], view.draft_size), view_seed(0, i, 0))

    return {
        "plain torchvision": plain,
        "cskd train_transform (draft 1.0)": ours_train,
        "cskd align view (draft 1.0, uint8)": ours_view,
        "cskd align view, pre-resized 256 copy": ours_small,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-photo", type=int, default=4)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "orig").mkdir()
        files = make_jpegs(Path(d) / "orig", args.per_photo)
        sizes = [Image.open(f).size for f in files]
        print(
            f"{len(files)} JPEGs from {len(PHOTOS)} real photos, mean size {np.mean([s[0] for s in sizes]):.0f} x "
            f"{np.mean([s[1] for s in sizes]):.0f}, mean {np.mean([f.stat().st_size for f in files]) / 1024:.0f} KiB"
        )
        preresize_images(Path(d) / "orig", Path(d) / "short256", short_side=256)  # `cskd preresize` does the same
        pipes = pipelines({p: Path(d) / "short256" / p.name for p in files})
        for f in pipes.values():  # warm-up (and a shape check)
            assert tuple(f(files[0], 0).shape) == (3, 224, 224)
        rates = {k: [] for k in pipes}
        for _ in range(args.reps):
            for name, f in pipes.items():
                t0 = time.perf_counter()
                for i, p in enumerate(files):
                    f(p, i)
                rates[name].append(len(files) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    base = med["plain torchvision"]
    print(f"\n{'pipeline':40s} {'images/s':>10s} {'min':>8s} {'max':>8s} {'x plain':>8s}")
    for k, v in rates.items():
        print(f"{k:40s} {med[k]:10.1f} {min(v):8.1f} {max(v):8.1f} {med[k] / base:8.2f}")
    print(f"ratio: {med['cskd align view (draft 1.0, uint8)'] / base:.2f}")


if __name__ == "__main__":
    sys.exit(main())
