"""Training-step time of the toy world's models on the CPU in fp32 against `precision="native"` with channels-last
memory (what the pipeline's steps use by default: `PipelineConfig.precision`, `PipelineConfig.channels_last`).

Each model (the toy large ViT with its conv stem, the toy CNN student; 64 px, batch `--batch`) trains
`--steps` + 1 optimizer steps on the CPU through the engine's `fit` on random images per configuration and
repetition (the first, with the loader's start, is not timed);
the configurations alternate within each repetition and the table gives the median seconds per step.
`native` is bf16 autocast where the CPU computes bf16 in hardware (AVX512-BF16 or AMX), else fp32, so on a
CPU without it the ratio measures channels-last alone; the table says what it resolved to.

The last line, `ratio: <r>`, is fp32 seconds / native + channels-last seconds, summed over both models (above 1:
the pipeline's default is faster).
"""

import argparse, statistics, time

import timm
import torch
from torch.utils.data import TensorDataset

CONFIGS = {"fp32": dict(precision="fp32"), "fp32 + CL": dict(precision="fp32", channels_last=True)}
CONFIGS["native + CL"] = dict(precision="native", channels_last=True)


def step_seconds(model_name: str, data: TensorDataset, batch: int, **cfg) -> float:
    "Seconds per optimizer step of `fit` (the first step, with the loader's start, is not counted)."
    from cskd.engine import Hook, TrainConfig, fit

    model = timm.create_model(model_name, num_classes=1)
    step = lambda net, b: (net(b[0]).float() - b[1]).pow(2).mean()
    times = []

    class Clock(Hook):  # the time of each optimizer step
        def before_fit(self, f):
            self.t = time.perf_counter()

        def after_step(self, f):
            now = time.perf_counter()
            times.append(now - self.t)
            self.t = now

    fit(
        model, data, step, TrainConfig(epochs=1, batch_size=batch, device="cpu", progress=False, **cfg), hooks=[Clock()]
    )
    return statistics.median(times[1:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import cskd.models  # noqa: F401  (registers the toy models with timm)
    from cskd.precision import resolve_precision
    from cskd.models import TOY_LARGE, TOY_STUDENT

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    n = args.batch * (args.steps + 1)
    data = TensorDataset(torch.rand(n, 3, 64, 64, generator=g), torch.rand(n, 1, generator=g))
    models = (TOY_LARGE, TOY_STUDENT)
    runs = {(m, c): [] for m in models for c in CONFIGS}
    for _ in range(args.reps):
        for m in models:
            for c, kw in CONFIGS.items():
                runs[m, c].append(step_seconds(m, data, args.batch, **kw))
    native = resolve_precision("native", torch.device("cpu"))
    print(f"CPU, {args.threads} thread(s), batch {args.batch}, 64 px; native resolves to {native} here")
    print(f"{'model':<18}" + "".join(f"{c + ' s/step':>21}" for c in CONFIGS) + f"{'speed-up':>10}")
    med = {k: statistics.median(v) for k, v in runs.items()}
    for m in models:
        row = "".join(f"{med[m, c]:>21.3f}" for c in CONFIGS)
        print(f"{m:<18}{row}{med[m, 'fp32'] / med[m, 'native + CL']:>10.2f}")
    fp32 = sum(med[m, "fp32"] for m in models)
    print(f"ratio: {fp32 / sum(med[m, 'native + CL'] for m in models):.3f}")


if __name__ == "__main__":
    main()
