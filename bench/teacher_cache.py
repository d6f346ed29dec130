"""Teacher-feature cache: one phase-1 epoch with the teacher run online against the same epoch reading
the teacher's outputs from the cache.

Same student, same data, same settings; only where the targets come from differs. The pool is a toy
world (`--images` JPEGs, 64 px); the teacher is a random-init open_clip ViT registered here
(`cskd-bench-vit`: 64 px, patch 8, width 256, 6 layers: 65 tokens), bigger than the student (timm
`resnet10t` at 64 px), as a CLIP ViT-B/16 teacher is bigger than a ViT-S/16 or ResNet-50 student. Each
epoch is `cskd.align.align(cfg)` with `epochs=1`, `eval_images=0`, no run folder; the time is the
engine's `fit` call (`train_seconds`). The cache (K = `--views` views per image) is built once before the
timed runs; its build time is printed with the number of epochs after which it has paid for itself.

Online and cached epochs alternate, `--reps` times each after one warm-up of each; we report medians.
The last line is `ratio: <online seconds per epoch / cached seconds per epoch>` (> 1: the cache is
faster; the gain is at most the teacher's share of the step). Usage: python bench/teacher_cache.py
[--images 512] [--views 4] [--reps 3] [--batch-size 64] [--device auto]
"""

import argparse, contextlib, io, statistics, sys, tempfile, time
from pathlib import Path

from cskd.align import align, align_config
from cskd.models import register_model_config
from cskd.toy import make_toy_world

BENCH_CLIP = "cskd-bench-vit"
register_model_config(
    BENCH_CLIP,
    dict(
        embed_dim=256,
        vision_cfg=dict(image_size=64, patch_size=8, width=256, layers=6, head_width=64),
        text_cfg=dict(context_length=16, vocab_size=49408, width=64, heads=2, layers=1),
    ),
)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as d:
        toy = make_toy_world(Path(d) / "toy", args.images, workers=1)
        base = dict(
            pool_sources=[str(toy / "images")],
            exclude_split=None,
            teacher=BENCH_CLIP,
            student="resnet10t",
            image_size=64,
            batch_size=args.batch_size,
            epochs=1,
            lr=1e-3,
            eval_images=0,
            progress=False,
            device=args.device,
            cache_views=args.views,
            cache_dir=str(Path(d) / "cache"),
            run_dir=None,
        )

        def quiet(cfg):
            with contextlib.redirect_stdout(io.StringIO()):
                return align(cfg)

        t0 = time.perf_counter()
        first = quiet(align_config(cache=True, **base))  # builds the cache (and warms up)
        build = first["cache_seconds"]
        quiet(align_config(cache=False, **base))  # warm-up
        times = {"online": [], "cached": []}
        for _ in range(args.reps):
            times["online"].append(quiet(align_config(cache=False, **base))["train_seconds"])
            times["cached"].append(quiet(align_config(cache=True, **base))["train_seconds"])
    med = {k: statistics.median(v) for k, v in times.items()}
    n = first["pool_images"]
    print(
        f"pool {n} images, batch {args.batch_size}, teacher {BENCH_CLIP}, student resnet10t, K = {args.views}, "
        f"device {args.device}, {time.perf_counter() - t0:.0f} s in all"
    )
    print(f"\n{'targets':10s} {'s/epoch':>9s} {'min':>7s} {'max':>7s} {'images/s':>9s}")
    for k, v in times.items():
        print(f"{k:10s} {med[k]:9.2f} {min(v):7.2f} {max(v):7.2f} {n / med[k]:9.1f}")
    saved = med["online"] - med["cached"]
    print(
        f"\ncache build (once, {n} x {args.views} views): {build:.2f} s; "
        + (f"pays for itself after {build / saved:.1f} epochs" if saved > 0 else "never pays for itself here")
    )
    print(f"ratio: {med['online'] / med['cached']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
