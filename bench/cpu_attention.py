"""Forward + backward time of timm ViTs on the CPU with PyTorch's fused attention against explicit attention
(`cskd.models.explicit_attention`), in fp32 and under bf16 autocast: why the engine switches to explicit attention
under bf16 on a CPU (`cskd.models.fast_attention`).

Each model runs `--reps` timed forward + backward passes of random images per configuration after one untimed
pass; the configurations alternate within each repetition and the table gives medians. The default models are
the toy large ViT (64 px, 65 tokens, batch 64), `vit_tiny_patch16_224` (197 tokens, batch 16) and
`vit_small_patch16_224` (batch 8); `--channels-last` puts models and inputs in channels-last memory.

The last line, `ratio: <r>`, is fused seconds / explicit seconds under bf16, for the toy ViT (above 1: explicit
attention is faster there).
"""

import argparse, statistics, time

import timm
import torch

MODELS = {
    "cskd_toy_vit_p8": (64, 64),
    "vit_tiny_patch16_224": (224, 16),
    "vit_small_patch16_224": (224, 8),
}  # size, batch


def step_time(model, x, bf16: bool) -> float:
    "Seconds of one forward + backward pass."
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        y = model(x)
    y.float().sum().backward()
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--channels-last", action="store_true")
    args = ap.parse_args(argv)
    import cskd.models  # noqa: F401  (registers the toy models with timm)
    from cskd.models import explicit_attention

    torch.set_num_threads(args.threads)
    layout = "channels-last" if args.channels_last else "contiguous"
    print(f"CPU, {args.threads} thread(s), {layout}; seconds per forward + backward pass, median of {args.reps}")
    print(f"{'model':<22}{'precision':>10}{'fused s':>10}{'explicit s':>12}{'speed-up':>10}")
    ratio = None
    for name, (size, batch) in MODELS.items():
        fused = timm.create_model(name, num_classes=0)
        explicit = timm.create_model(name, num_classes=0)
        explicit.load_state_dict(fused.state_dict())
        explicit_attention(explicit)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        if args.channels_last:
            fused, explicit = (m.to(memory_format=torch.channels_last) for m in (fused, explicit))
            x = x.contiguous(memory_format=torch.channels_last)
        for bf16 in (False, True):
            times = {"fused": [], "explicit": []}
            for m in (fused, explicit):
                step_time(m, x, bf16)  # warm-up
            for _ in range(args.reps):
                times["fused"].append(step_time(fused, x, bf16))
                times["explicit"].append(step_time(explicit, x, bf16))
            f, e = statistics.median(times["fused"]), statistics.median(times["explicit"])
            print(f"{name:<22}{'bf16' if bf16 else 'fp32':>10}{f:>10.3f}{e:>12.3f}{f / e:>10.2f}")
            ratio = f / e if bf16 and ratio is None else ratio
    print(f"ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
