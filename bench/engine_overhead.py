"""Engine overhead: `cskd.engine.fit` against a bare PyTorch loop doing the same work.

Both loops train the same small conv net (same initial weights) on the same random 32x32 images for
the same number of optimizer steps with the same batch size and AdamW settings, one epoch, no
evaluation. The bare loop is what one writes by hand: a shuffling DataLoader (drop_last), forward,
cross-entropy, backward, step, and nothing else. The engine runs with its defaults (progress bar,
a metrics line every 10 steps, the NaN check with one `.item()` per step, a learning-rate schedule
set every step: `schedule="constant"` here, parameter groups without decay on biases/norms) and
writes a real run folder: lock, `config.json`, `metrics.jsonl`, and its checkpoint at the end of the
epoch (no mid-epoch checkpoints). Timings cover the whole call, set-up included.

The two loops alternate, `--reps` times each after one untimed warm-up of each, and we report the
median time. The last line is `ratio: <engine seconds / bare seconds>`: 1.00 means no overhead;
the target is <= 1.05. The ratio depends on how heavy a step is: the engine adds a roughly fixed cost
per step and per run, so a tinier model or batch shows a larger ratio.

On a shared, busy CPU the spread between repetitions can exceed the overhead itself; `--threads 1`
and more `--reps` make the comparison steadier (each pair of runs is adjacent in time), and
`--clock cpu` (with `--threads 1`) measures the process's CPU time instead of wall time, which other
processes disturb much less; it does not count time spent waiting for the disk (the checkpoint's
fsync). The per-pair ratios are printed too (median and range) as a check on the noise.

Usage: python bench/engine_overhead.py [--steps 100] [--batch-size 64] [--reps 5] [--threads 0] [--device cpu]
"""

import argparse, copy, statistics, tempfile, time

import torch
from torch import nn

from cskd.engine import TrainConfig, fit


def make_model(width=32):
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1),
        nn.BatchNorm2d(2 * width),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2 * width, 10),
    )


def step_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


CLOCK = time.perf_counter


def bare(model, ds, bs, lr, device):
    t = CLOCK()
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=bs, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(0)
    )
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = step_fn(model, (x, y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return CLOCK() - t


def engine(model, ds, bs, lr, device):
    with tempfile.TemporaryDirectory() as d:
        t = CLOCK()
        fit(
            model,
            ds,
            step_fn,
            TrainConfig(
                epochs=1,
                batch_size=bs,
                lr=lr,
                weight_decay=0.05,
                schedule="constant",
                precision="fp32",
                device=device,
                run_dir=d,
            ),
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return CLOCK() - t


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall", help="cpu: this process's CPU time (CPU device only)"
    )
    a = p.parse_args()
    global CLOCK
    CLOCK = time.process_time if a.clock == "cpu" else time.perf_counter
    if a.threads:
        torch.set_num_threads(a.threads)
    g = torch.Generator().manual_seed(0)
    n = a.steps * a.batch_size
    ds = torch.utils.data.TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
    torch.manual_seed(0)
    init = make_model(a.width)
    runs = dict(bare=bare, engine=engine)
    times = {k: [] for k in runs}
    for rep in range(a.reps + 1):  # rep 0 warms up both and is not counted
        order = list(runs) if rep % 2 else list(runs)[::-1]
        for k in order:
            t = runs[k](copy.deepcopy(init), ds, a.batch_size, 1e-3, a.device)
            if rep:
                times[k].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(
        f"{a.steps} steps, batch {a.batch_size}, device {a.device}, torch threads {torch.get_num_threads()}, "
        f"{a.clock} clock, median of {a.reps} interleaved runs"
    )
    print(f"{'loop':<8}{'seconds':>10}{'steps/s':>10}")
    for k in runs:
        print(f"{k:<8}{med[k]:>10.3f}{a.steps / med[k]:>10.1f}")
    pairs = sorted(e / b for e, b in zip(times["engine"], times["bare"]))
    print(f"per-pair ratios: median {statistics.median(pairs):.3f}, range {pairs[0]:.3f}..{pairs[-1]:.3f}")
    print(f"ratio: {med['engine'] / med['bare']:.3f}")


if __name__ == "__main__":
    main()
