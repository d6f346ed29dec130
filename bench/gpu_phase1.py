"""Phase 1 on one GPU: images/s, step time, peak memory and model-FLOPs utilisation of the engine's phase-1
step, on synthetic batches already on the device (compute only) and on real JPEG files through the data
path (end to end, with the CPU and the GPU decode path).

Every measurement is `cskd.engine.fit` running the real phase-1 step (`cskd.align.align_step`, the
teacher online) on the real models with random weights: by default the paper's pair, an open_clip
ViT-B/16 CLIP teacher and a timm ViT-S/16 student at 224 px; `--tiny`: the toy CLIP (`cskd-toy-vit`) and
a ViT-Tiny student at 64 px, small enough for the CPU. Precision bf16 autocast (`--precision`),
optional `--compile` (the engine compiles the student) and `--channels-last`.

- compute only: a hook replaces the engine's loader by `--steps` uint8 batches made once on the device,
  so the step runs with no data path at all;
- end to end: `--e2e-steps` batches of pool entries cycling over a few hundred AVA-sized JPEGs made from the real
  photographs bundled with scikit-image (as `bench/data_path.py` makes them), read by `--workers` loader
  workers at the phase's draft setting; `--decode cpu` (PIL in the workers), `gpu` (`torchvision.io.decode_jpeg`
  on the device) or both.

Times come from a hook that stamps the clock after every optimizer step (the engine reads the loss each
step, which waits for the device); the first `--warmup` steps (compilation, worker start-up) are left
out. FLOPs: `torch.utils.flop_counter.FlopCounterMode` around one engine step of the compute-only setup
(student forward and backward and teacher forward; optimizer arithmetic is not counted), and around one
teacher forward alone. MFU = FLOPs per image x images/s / `--peak-flops` (default 989e12, H100 / H200
SXM dense bf16, on CUDA; on the CPU n/a unless given). Peak memory: `torch.cuda.max_memory_allocated`
per run (n/a on the CPU). The decode check compares the two decode paths' views of the same seeds.

The last line is `ratio: <best end-to-end images/s / compute-only images/s>` (1: the data path keeps up;
below 1: how far it holds the device back). Without a CUDA device and without `--device`, it runs the `--tiny`
settings (so `make bench` stays short on a CPU machine). Usage: python bench/gpu_phase1.py [--tiny] [--compile]
[--channels-last] [--decode cpu,gpu] [--batch-size 256] [--steps 30] [--workers N] [--peak-flops F]
"""

import argparse, os, statistics, sys, tempfile, time
from pathlib import Path

import torch
from torch.utils.data import TensorDataset
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_path import make_jpegs  # noqa: E402

from cskd.align import align_config, align_step, build_align_model  # noqa: E402
from cskd.engine import Hook, fit  # noqa: E402
from cskd.precision import get_autocast, resolve_device  # noqa: E402
from cskd.gpu_decode import on_device, pool_dataset  # noqa: E402
from cskd.models import TOY_CLIP, clip_teacher  # noqa: E402
from cskd.teacher_cache import PoolViews, teacher_targets  # noqa: E402
from cskd.views import SeededView  # noqa: E402

SETTINGS = dict(
    full=dict(
        teacher="ViT-B-16", student="vit_small_patch16_224", image_size=224, batch_size=256, steps=30, warmup=5,
        per_photo=24, e2e_steps=40, workers=min(16, os.cpu_count() or 1),
    ),
    tiny=dict(
        teacher=TOY_CLIP, student="vit_tiny_patch16_224", image_size=64, batch_size=16, steps=4, warmup=1,
        per_photo=2, e2e_steps=4, workers=1,
    ),
)  # fmt: skip


class StepClock(Hook):
    "The wall clock after every optimizer step (the engine's loss check waits for the device each step)."

    def before_fit(self, f):
        self.t = []

    def after_step(self, f):
        self.t.append(time.perf_counter())

    def rates(self, batch: int, warmup: int) -> tuple:
        "(images/s, median step ms) over the steps after the first `warmup`."
        t = self.t[warmup - 1 :] if warmup else self.t
        dt = [b - a for a, b in zip(t, t[1:])]
        return batch * len(dt) / (t[-1] - t[0]), 1000 * statistics.median(dt)


class DeviceBatches(Hook):
    "Compute only: the engine's loader replaced by uint8 batches made once on the device (no data path)."

    order = 5

    def __init__(self, size: int):
        self.size = size

    def before_fit(self, f):
        n = f.cfg.batch_size // f.cfg.accum_steps
        g = torch.Generator(device=f.device).manual_seed(0)
        x = torch.randint(0, 256, (n, 3, self.size, self.size), generator=g, device=f.device, dtype=torch.uint8)
        f.loader = [(x, torch.arange(n, device=f.device))] * (f.steps_per_epoch * f.cfg.accum_steps)


class CountFlops(Hook):
    "FlopCounterMode around the first optimizer step of a run."

    order = 6

    def before_fit(self, f):
        self.mode = FlopCounterMode(display=False)
        self.mode.__enter__()
        self.open = True

    def after_step(self, f):
        if self.open:
            self.mode.__exit__(None, None, None)
            self.open, self.flops = False, self.mode.get_total_flops()

    def after_fit(self, f):
        if self.open:
            self.mode.__exit__(None, None, None)
            self.open = False


def parse(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="small models at 64 px: runs on the CPU in seconds")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--decode", default="cpu,gpu", help="end-to-end decode paths, comma-separated: cpu, gpu")
    for k in ("teacher", "student"):
        ap.add_argument(f"--{k}")
    for k in ("image_size", "batch_size", "steps", "warmup", "per_photo", "e2e_steps", "workers"):
        ap.add_argument("--" + k.replace("_", "-"), type=int)
    ap.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU (default 989e12 on CUDA, none on CPU)")
    args = ap.parse_args(argv)
    if not args.tiny and args.device == "auto" and not torch.cuda.is_available():
        print("no CUDA device: the --tiny settings (the paper's models need a GPU; --device cpu forces them)")
        args.tiny = True
    for k, v in SETTINGS["tiny" if args.tiny else "full"].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.decode = [d.strip() for d in args.decode.split(",") if d.strip()]
    return args


def phase_config(args, **kw):
    "The phase-1 config of every run: the bench's models and sizes, no run folder, no evaluation, quiet."
    base = dict(
        teacher=args.teacher, student=args.student, image_size=args.image_size, batch_size=args.batch_size,
        precision=args.precision, compile=args.compile, channels_last=args.channels_last, device=args.device,
        epochs=1, eval_images=0, run_dir=None, progress=False, log_every=10**6, pool_sources=["."],
        exclude_split=None,
    )  # fmt: skip
    return align_config(**{**base, **kw})


def run(model, teacher, train_set, cfg, hooks=(), collate_fn=None) -> dict:
    "One `fit` of the phase-1 step; its step clock and, on CUDA, the peak memory."
    dev = resolve_device(cfg)
    clock = StepClock()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    fit(model, train_set, align_step(cfg, teacher, cached=False), cfg, collate_fn=collate_fn, hooks=[clock, *hooks])
    peak = torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
    return dict(clock=clock, peak_gib=peak)


def count_flops(args, model, teacher) -> tuple:
    "(FLOPs of one training step, of one teacher forward) per image, counted by FlopCounterMode, eager."
    cfg = phase_config(args, compile=False)
    counter = CountFlops()
    run(
        model,
        teacher,
        TensorDataset(torch.zeros(cfg.batch_size)),
        cfg,
        hooks=[DeviceBatches(args.image_size)] + [counter],
    )
    dev = resolve_device(cfg)
    x = torch.randint(0, 256, (cfg.batch_size, 3, args.image_size, args.image_size), dtype=torch.uint8, device=dev)
    with FlopCounterMode(display=False) as fc, get_autocast(cfg.precision, dev)():
        teacher_targets(teacher, x, cfg.granularity)
    return counter.flops / cfg.batch_size, fc.get_total_flops() / cfg.batch_size


def decode_check(files, args, dev, draft_factor, n: int = 64) -> tuple:
    "Mean and worst per-view |GPU decode path on `dev` - CPU path| in grey levels, same seeds."
    view = SeededView(args.image_size, (0.08, 1.0), draft_factor=draft_factor)
    paths = [files[i % len(files)] for i in range(n)]
    cpu = PoolViews(paths, view, 0, 0)
    enc, collate = pool_dataset("gpu", paths, view, 0, 0)
    a = torch.stack([cpu[i][0] for i in range(n)]).float()
    b, _ = on_device(collate([enc[i] for i in range(n)]), dev, cached=False)
    d = (a - b.cpu().float()).abs().mean((1, 2, 3))
    return float(d.mean()), float(d.max())


def end_to_end(args, model, teacher, files, decode: str) -> dict:
    "A run over `e2e_steps` batches of the pool (the JPEG files cycled), through the loader and `decode`."
    cfg = phase_config(args, num_workers=args.workers, decode=decode)
    view = SeededView(cfg.image_size, (cfg.min_scale, 1.0), hflip=cfg.hflip, draft_factor=cfg.draft_factor)
    paths = [str(files[i % len(files)]) for i in range(args.e2e_steps * cfg.batch_size)]
    ds, collate = pool_dataset(decode, paths, view, cfg.view_seed, cfg.seed)
    return run(model, teacher, ds, cfg, collate_fn=collate)


def measure(args, files) -> tuple:
    "The models, the FLOP count, the compute-only run and the end-to-end runs."
    cfg = phase_config(args)
    dev = resolve_device(cfg)
    torch.manual_seed(0)
    teacher = clip_teacher(cfg.teacher).to(dev).eval()
    model = build_align_model(cfg, teacher)
    step_flops, teacher_flops = count_flops(args, model, teacher)
    rows = {}
    synthetic = TensorDataset(torch.zeros(args.steps * cfg.batch_size))
    rows["compute only"] = run(model, teacher, synthetic, cfg, hooks=[DeviceBatches(args.image_size)])
    for d in args.decode:
        rows[f"end to end, {d} decode"] = end_to_end(args, model, teacher, files, d)
    return dev, step_flops, teacher_flops, rows


def report(args, dev, step_flops, teacher_flops, rows, check, n_files, seconds) -> float:
    "The table and the ratio line."
    peak = args.peak_flops or (989e12 if dev.type == "cuda" else None)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    print(
        f"phase 1: teacher {args.teacher}, student {args.student}, {args.image_size} px, batch {args.batch_size}, "
        f"{args.precision}, compile {args.compile}, channels_last {args.channels_last}, device {dev} ({name}), "
        f"{args.workers} loader workers, {n_files} JPEGs, {seconds:.0f} s in all"
    )
    print(
        f"FLOPs per image (FlopCounterMode): training step {step_flops / 1e9:.2f} G "
        f"(teacher forward {teacher_flops / 1e9:.2f} G, "
        f"student forward + backward {(step_flops - teacher_flops) / 1e9:.2f} G)"
    )
    print(f"peak FLOP/s for MFU: {f'{peak:.3g}' if peak else 'n/a'}")
    print(f"\n{'run':26s} {'images/s':>10s} {'step ms':>9s} {'peak GiB':>9s} {'MFU':>7s}")
    rates = {}
    for k, r in rows.items():
        warmup = args.warmup if k == "compute only" else min(args.warmup, len(r["clock"].t) - 2)
        ips, ms = r["clock"].rates(args.batch_size, warmup)
        rates[k] = ips
        mem = f"{r['peak_gib']:9.2f}" if r["peak_gib"] is not None else f"{'n/a':>9s}"
        mfu = f"{100 * step_flops * ips / peak:6.1f}%" if peak else f"{'n/a':>7s}"
        print(f"{k:26s} {ips:10.1f} {ms:9.1f} {mem} {mfu}")
    print(f"\ndecode check, GPU path on {dev} vs CPU path, 64 views of the same seeds, |difference| in grey levels:")
    for f, (mean, worst) in check.items():
        label = "full-size decoding" if f is None else f"draft decoding (factor {f})"
        print(f"  {label:28s} mean {mean:5.2f}  worst view {worst:5.2f}")
    e2e = [v for k, v in rates.items() if k != "compute only"]
    return max(e2e) / rates["compute only"] if e2e else float("nan")


def main(argv=None):
    args = parse(argv)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as d:
        files = make_jpegs(Path(d), args.per_photo)
        dev, step_flops, teacher_flops, rows = measure(args, files)
        check = {f: decode_check(files, args, dev, f) for f in (None, 1.0)}
        ratio = report(args, dev, step_flops, teacher_flops, rows, check, len(files), time.perf_counter() - t0)
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    sys.exit(main())
