"""Cost of capturing attention maps, against a plain forward of the same image tower.

Two random-init ViTs of the same shape (12 layers, width 192, 3 heads of 64, patch 16): an open_clip
ViT (its `visual` tower) and timm's `vit_tiny_patch16_224`, at `--size` px (default 224), batch
`--batch` (default 16), on the CPU, eval mode, `torch.no_grad()`. "plain" is one forward of the tower
as the library runs it (fused attention kernels where the library uses them); "capture" is
`cskd.attention.capture_attention` on the same batch (open_clip: `need_weights=True`; timm: fused
attention switched off for the capture). Times are medians over `--repeats` runs after one warm-up,
plain and capture runs interleaved (the machine may be shared).

The last line, `ratio: <r>`, is capture time / plain time for the WORSE of the two models (the
larger ratio); the table gives both.
"""

import argparse, logging, statistics, time

import torch


def build(size: int):
    import open_clip, timm

    logging.getLogger().setLevel(logging.ERROR)  # open_clip warns about random weights
    clip = open_clip.create_model(
        "ViT-B-32",
        pretrained=None,
        embed_dim=192,
        vision_cfg=dict(image_size=size, patch_size=16, width=192, layers=12, head_width=64),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=size, num_classes=0).eval()
    return {"open_clip ViT (12x192, p16)": (clip, clip.visual), "timm vit_tiny_patch16_224": (vit, vit)}


def median_ms(fns, repeats: int) -> list[float]:
    "Median ms of each function; runs are interleaved so that load from other processes hits all alike."
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
    return [1000 * statistics.median(ts) for ts in times]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = ap.parse_args(argv)
    from cskd.attention import capture_attention

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size)
    rows = []
    for name, (model, tower) in build(args.size).items():

        def plain():
            with torch.no_grad():
                tower(x)

        plain_ms, cap_ms = median_ms([plain, lambda: capture_attention(model, x)], args.repeats)
        rows.append((name, plain_ms, cap_ms, cap_ms / plain_ms))

    print(f"batch {args.batch}, {args.size} px, CPU, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'model':<30} {'plain ms':>10} {'capture ms':>11} {'ratio':>7}")
    for name, p, c, r in rows:
        print(f"{name:<30} {p:>10.1f} {c:>11.1f} {r:>7.3f}")
    worst = max(rows, key=lambda r: r[3])
    print(f"worse model: {worst[0]}")
    print(f"ratio: {worst[3]:.3f}")


if __name__ == "__main__":
    main()
