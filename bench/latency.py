"""Inference latency on the CPU: the IAA teacher (CLIP ViT-B/16 image tower + 10-bin head) against the
distilled student (a timm ResNet-18 + the same head), both at 224 px, batch 1 and batch 32, in PyTorch
(eager, `torch.inference_mode`) and in ONNX Runtime (the files `cskd.export.export_scorer` writes).

Weights are random (no downloads): latency does not depend on the weights' values. The teacher is what
`cskd.models.build_encoder("clip:ViT-B-16")` builds, i.e. CLIP's image encoder as CSKD fine-tunes it; the
student defaults to ResNet-18, the classic light IAA backbone (NIMA's and many IAA papers' baseline),
about 1.8 GFLOPs against ViT-B/16's 17.6 at 224 px; dense 3x3 convolutions run well on CPUs. A smaller
student (`--student mobilenetv3_small_100`, 0.06 GFLOPs) is faster still; we take the conservative one.

Each measurement: warm-up calls first, then `--reps` timed calls (batch 32: `--reps-32`), teacher and
student alternating so both see the same machine load; the median is reported (and the min / max).
The per-row ratio is teacher time / student time. The final line is
`ratio: <teacher latency / student latency at batch 1, PyTorch>`; the target is >= 5.

We default to one thread: on a shared machine, two threads per process against other processes' load
make multi-threaded timings erratic (a 30 ms ResNet-18 call sometimes takes 1 s while OpenMP threads
wait for a core), and one thread is also what a server running one model per core sees.

Usage: python bench/latency.py [--threads 1] [--reps 20] [--reps-32 5] [--student resnet18] [--no-onnx]
"""

import argparse, logging, statistics, sys, tempfile, time, warnings
from pathlib import Path

import numpy as np
import torch

from cskd.models import IAAHead, IAAModel, build_encoder

logging.getLogger().setLevel(logging.ERROR)  # open_clip logs "random init" at WARNING


def iaa_model(spec, image_size=None):
    enc = build_encoder(spec, image_size=image_size)
    return IAAModel(enc, IAAHead(enc.dim)).eval()


def timed(fn, x):
    t = time.perf_counter()
    fn(x)
    return time.perf_counter() - t


def measure(fns, x, reps, warmup):
    "Median, min, max seconds per call of each of `fns` (alternating)."
    for _ in range(warmup):
        for f in fns:
            f(x)
    times = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            times[i].append(timed(f, x))
    return [(statistics.median(t), min(t), max(t)) for t in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="clip:ViT-B-16")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch and ONNX Runtime intra-op threads (default 1; 0: torch's default)"
    )
    ap.add_argument("--reps", type=int, default=20, help="timed calls at batch 1")
    ap.add_argument("--reps-32", type=int, default=5, help="timed calls at batch 32")
    ap.add_argument("--no-onnx", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    models = dict(teacher=iaa_model(a.teacher), student=iaa_model(a.student, a.image_size))
    size = a.image_size
    for n, m in models.items():
        s = m.encoder.image_size
        if (s if isinstance(s, int) else s[0]) != size:
            sys.exit(f"{n} takes {s} px, not --image-size {size}")
    params = {n: sum(p.numel() for p in m.parameters()) / 1e6 for n, m in models.items()}
    backends = {"pytorch": {}}
    for n, m in models.items():
        backends["pytorch"][n] = lambda x, m=m: m(torch.from_numpy(x))
    tmp = tempfile.TemporaryDirectory()
    if not a.no_onnx:
        from cskd.export import export_scorer
        from cskd.exported import load_exported

        backends["onnxruntime"] = {}
        for n, m in models.items():
            t = time.perf_counter()
            f = export_scorer(m, Path(tmp.name) / f"{n}.onnx")
            ex = load_exported(f, threads=threads)
            print(
                f"exported {n} to ONNX in {time.perf_counter() - t:.0f} s ({f.stat().st_size / 1e6:.0f} MB)",
                file=sys.stderr,
            )
            backends["onnxruntime"][n] = lambda x, s=ex.session: s.run(None, {"image": x})
    print(
        f"teacher {a.teacher} ({params['teacher']:.1f} M params) vs student {a.student} ({params['student']:.1f} M "
        "params), "
        f"{size} px, CPU, {threads} threads, median of {a.reps} (batch 1) / {a.reps_32} (batch 32) alternating calls "
        "after warm-up"
    )
    print(
        f"{'backend':12s} {'batch':>5s} {'teacher ms':>11s} {'student ms':>11s} {'teacher/student':>16s} "
        f"{'student img/s':>14s}  (min..max ms: teacher | student)"
    )
    ratio1 = None
    rng = np.random.default_rng(0)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for be, fns in backends.items():
            for bs, reps, warm in ((1, a.reps, 3), (32, a.reps_32, 1)):
                x = rng.standard_normal((bs, 3, size, size), dtype=np.float32)
                (tm, tlo, thi), (sm, slo, shi) = measure([fns["teacher"], fns["student"]], x, reps, warm)
                r = tm / sm
                if be == "pytorch" and bs == 1:
                    ratio1 = r
                print(
                    f"{be:12s} {bs:5d} {tm * 1e3:11.1f} {sm * 1e3:11.1f} {r:16.2f} {bs / sm:14.1f}  "
                    f"({tlo * 1e3:.1f}..{thi * 1e3:.1f} | {slo * 1e3:.1f}..{shi * 1e3:.1f})",
                    flush=True,
                )
    tmp.cleanup()
    print(f"ratio: {ratio1:.2f}")


if __name__ == "__main__":
    main()
