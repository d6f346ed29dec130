"""Seconds per image of the last stage of every cskd image transform: torchvision's `ToTensor` + `Normalize`
against `cskd.images.ToNormalized` (the same float operations in one pass; the outputs are checked equal).

Images: `--n` RGB images of `--size` px made from a fixed random seed (the toy world's images are 64 px), one
torch thread; the two stages alternate within each of `--reps` repetitions and the table gives the median.

The last line, `ratio: <r>`, is torchvision's seconds / ToNormalized's seconds (above 1: ToNormalized is faster).
"""

import argparse, statistics, time

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # CLIP's


def per_image(stage, images) -> float:
    t = time.perf_counter()
    for im in images:
        stage(im)
    return (time.perf_counter() - t) / len(images)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    from cskd.images import ToNormalized

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)) for _ in range(args.n)]
    stages = {"ToTensor + Normalize": T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)]), "ToNormalized": None}
    stages["ToNormalized"] = ToNormalized(MEAN, STD)
    a, b = stages.values()
    assert all(torch.equal(a(im), b(im)) for im in images[:100]), "the two stages must give the same tensors"
    times = {k: [] for k in stages}
    for _ in range(args.reps):
        for k, stage in stages.items():
            times[k].append(per_image(stage, images))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.n} images of {args.size} px, one thread, median of {args.reps}")
    print(f"{'stage':<24}{'us/image':>10}{'min':>9}{'max':>9}")
    for k, v in times.items():
        print(f"{k:<24}{med[k] * 1e6:>10.1f}{min(v) * 1e6:>9.1f}{max(v) * 1e6:>9.1f}")
    print(f"ratio: {med['ToTensor + Normalize'] / med['ToNormalized']:.3f}")


if __name__ == "__main__":
    main()
