"""cskd.attention on real (tiny, random-init) open_clip and timm ViTs: capture, metrics, streaming, figures, bench."""

import itertools
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import open_clip
import pytest
import timm
import torch
from torch import nn
from torch.nn import functional as F

from cskd.attention import (
    AttentionCapture,
    AttentionStats,
    attention_distance,
    attention_entropy,
    attention_spec,
    attention_stats,
    capture_attention,
    collapse_summary,
    plot_attention_gallery,
    plot_attention_stats,
    plot_collapse_summary,
)

ROOT = Path(__file__).resolve().parents[1]
logging.getLogger().setLevel(logging.ERROR)  # open_clip's "random weights" warning


def tiny_clip(**vision):
    vc = dict(image_size=32, patch_size=8, width=64, layers=2, head_width=32) | vision
    return open_clip.create_model(
        "ViT-B-32",
        pretrained=None,
        embed_dim=32,
        vision_cfg=vc,
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()


def tiny_timm(name="vit_tiny_patch16_224", img_size=32, **kw):
    return timm.create_model(name, pretrained=False, img_size=img_size, num_classes=0, **kw).eval()


class Wrapper(nn.Module):
    """Any object holding the model under `.clip`, `.visual` or `.model` (like the project's wrappers)."""

    def __init__(self, **kw):
        super().__init__()
        for k, v in kw.items():
            setattr(self, k, v)


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return tiny_clip()


@pytest.fixture(scope="module")
def timm_models():
    torch.manual_seed(0)
    return {
        "cls": (tiny_timm(img_size=64), 64, 1),
        "distilled": (tiny_timm("deit_tiny_distilled_patch16_224", img_size=32), 32, 2),
        "registers": (tiny_timm(img_size=48, reg_tokens=4), 48, 5),
        "no prefix": (tiny_timm(img_size=32, class_token=False, global_pool="avg"), 32, 0),
    }


def no_hooks(model):
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---------------------------------------------------------------- capture


def test_open_clip_capture_leaves_output_and_model_unchanged(clip_model):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        y0 = clip_model.encode_image(x)
    with AttentionCapture(clip_model) as cap, torch.no_grad():
        y1 = clip_model.encode_image(x)  # the full model's own entry point
    assert torch.equal(y0, y1)
    assert [tuple(m.shape) for m in cap.maps] == [(3, 2, 17, 17)] * 2
    assert no_hooks(clip_model)
    with torch.no_grad():
        y2 = clip_model.encode_image(x)  # a later forward records nothing
    assert torch.equal(y0, y2) and len(cap.maps) == 2
    # with autograd on, MultiheadAttention runs SDPA without weights and an explicit softmax with them:
    # only float32 rounding may differ
    y3 = clip_model.visual(x)
    with AttentionCapture(clip_model):
        y4 = clip_model.visual(x)
    assert (y4 - y3).abs().max() <= 1e-6 * y3.abs().max()
    y4.sum().backward()  # gradients flow through a captured forward


def test_open_clip_maps_are_the_softmax_attention(clip_model):
    """Recompute softmax(q k^T / sqrt(d)) per head from the block's input and in_proj weights."""
    x = torch.randn(2, 3, 32, 32)
    inputs = []
    blk = clip_model.visual.transformer.resblocks[1]
    h = blk.register_forward_pre_hook(lambda m, a: inputs.append(blk.ln_1(a[0])))
    try:
        maps = capture_attention(clip_model, x)
    finally:
        h.remove()
    z = inputs[0]  # (B, T, D), batch first
    mha = blk.attn
    q, k, _ = F.linear(z, mha.in_proj_weight, mha.in_proj_bias).chunk(3, -1)
    B, T, D = z.shape
    nh = mha.num_heads
    q = q.view(B, T, nh, -1).transpose(1, 2)
    k = k.view(B, T, nh, -1).transpose(1, 2)
    ref = (q @ k.transpose(-1, -2) / math.sqrt(D // nh)).softmax(-1)
    torch.testing.assert_close(maps[1], ref, atol=1e-5, rtol=1e-4)


def test_timm_capture_outputs_hooks_and_flags(timm_models):
    vit, size, _ = timm_models["cls"]
    x = torch.randn(2, 3, size, size)
    flags = [b.attn.fused_attn for b in vit.blocks]
    with torch.no_grad():
        z0 = vit(x)
    with AttentionCapture(vit) as cap, torch.no_grad():
        assert not any(b.attn.fused_attn for b in vit.blocks)
        z1 = vit(x)
    # the fused kernel was switched off: only float32 rounding may differ
    assert (z1 - z0).abs().max() <= 1e-6 * z0.abs().max()
    assert len(cap.maps) == 12 and [b.attn.fused_attn for b in vit.blocks] == flags and no_hooks(vit)
    with torch.no_grad():
        z2 = vit(x)
    assert torch.equal(z0, z2) and len(cap.maps) == 12

    # on a model already running unfused attention, capture is bit-identical
    for b in vit.blocks:
        b.attn.fused_attn = False
    try:
        with torch.no_grad():
            u0 = vit(x)
        with AttentionCapture(vit), torch.no_grad():
            u1 = vit(x)
        assert torch.equal(u0, u1)
        assert not any(b.attn.fused_attn for b in vit.blocks)  # its own setting, restored
    finally:
        for b, f in zip(vit.blocks, flags):
            b.attn.fused_attn = f


def test_timm_maps_are_the_softmax_attention(timm_models):
    vit, size, _ = timm_models["registers"]
    attn = vit.blocks[3].attn
    inputs = []
    h = attn.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
    try:
        maps = capture_attention(vit, torch.randn(2, 3, size, size))
    finally:
        h.remove()
    z = inputs[0]
    B, T, _ = z.shape
    q, k, _ = attn.qkv(z).reshape(B, T, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    ref = (attn.q_norm(q) * attn.scale @ attn.k_norm(k).transpose(-2, -1)).softmax(-1)
    torch.testing.assert_close(maps[3], ref, atol=1e-5, rtol=1e-4)


def test_hooks_removed_and_flags_restored_after_an_error(timm_models, clip_model):
    vit, size, _ = timm_models["cls"]
    flags = [b.attn.fused_attn for b in vit.blocks]
    with pytest.raises(RuntimeError, match="boom"):
        with AttentionCapture(vit):
            raise RuntimeError("boom")
    assert no_hooks(vit) and [b.attn.fused_attn for b in vit.blocks] == flags
    with pytest.raises(RuntimeError):  # a wrong input inside capture_attention
        capture_attention(clip_model, torch.randn(1, 3, 40, 40))
    assert no_hooks(clip_model)


@pytest.mark.parametrize("kind", ["cls", "distilled", "registers", "no prefix"])
def test_timm_prefix_tokens(timm_models, kind):
    vit, size, npre = timm_models[kind]
    ps, grid, n = attention_spec(vit)
    assert (ps, n) == (16, npre) and grid == (size // 16, size // 16)
    maps = capture_attention(vit, torch.randn(2, 3, size, size))
    N = grid[0] * grid[1]
    assert maps.num_prefix_tokens == npre and maps.grid == grid and maps.patch_size == 16
    assert all(tuple(m.shape) == (2, 3, N + npre, N + npre) for m in maps)
    torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 3, N + npre))
    d = attention_distance(maps[-1], 16, npre)
    e = attention_entropy(maps[-1], npre)
    assert d.shape == e.shape == (3,)
    max_d = 16 * math.dist((0, 0), (grid[0] - 1, grid[1] - 1))
    assert ((d >= 0) & (d <= max_d)).all() and ((e >= 0) & (e <= math.log(N) + 1e-6)).all()


def test_non_square_images_use_their_own_grid():
    vit = tiny_timm(img_size=(32, 48))
    maps = capture_attention(vit, torch.randn(2, 3, 32, 48))
    assert maps.grid == (2, 3) and maps[0].shape[-1] == 7
    images = torch.randn(4, 3, 32, 48)
    maps = capture_attention(vit, images)
    df = attention_stats(vit, images, progress=False, batch_size=2)
    for layer in (0, 11):
        np.testing.assert_allclose(
            df[df.layer == layer].distance.values,
            attention_distance(maps[layer], 16, 1, grid=(2, 3)).numpy(),
            rtol=1e-5,
        )
    with pytest.raises(ValueError, match="square"):
        attention_distance(maps[0], 16, 1)


def test_wrappers_and_training_mode(clip_model, timm_models):
    vit, size, _ = timm_models["cls"]
    x = torch.randn(2, 3, 32, 32)
    ref = capture_attention(clip_model, x)
    for wrapped in (
        Wrapper(clip=clip_model),
        Wrapper(visual=clip_model.visual),
        Wrapper(model=Wrapper(clip=clip_model)),
    ):
        got = capture_attention(wrapped, x)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
    assert attention_spec(Wrapper(model=vit)) == attention_spec(vit) == (16, (4, 4), 1)
    # capture runs in eval mode and without autograd, then restores the mode
    vit.train()
    try:
        maps = capture_attention(vit, torch.randn(1, 3, size, size))
        assert vit.training and not maps[0].requires_grad
    finally:
        vit.eval()


def test_unsupported_models_are_named():
    qk = tiny_clip(qk_norm=True)
    with pytest.raises(TypeError, match=r"open_clip\.transformer\.Attention"):
        capture_attention(qk, torch.randn(1, 3, 32, 32))
    with pytest.raises(TypeError, match="ResNet"):
        AttentionCapture(timm.create_model("resnet10t", pretrained=False))
    with pytest.raises(ValueError, match="images"):
        capture_attention(tiny_clip(), torch.randn(3, 32, 32))


# ---------------------------------------------------------------- metrics, against a brute-force reading of the
# definition


def brute_force(attn: np.ndarray, patch_size: float, npre: int, g: int):
    """the definition in docs/method.md with plain Python loops: (heads,) distance and entropy."""
    B, H, T, _ = attn.shape
    pts = [(r, c) for r in range(g) for c in range(g)]
    N = len(pts)
    dist, ent = np.zeros(H), np.zeros(H)
    for h in range(H):
        for b in range(B):
            d_img = e_img = 0.0
            for qi in range(N):
                row = attn[b, h, npre + qi, npre:]
                row = row / row.sum()
                d_img += sum(row[k] * patch_size * math.dist(pts[qi], pts[k]) for k in range(N))
                e_img += -sum(p * math.log(p) for p in row if p > 0)
            dist[h] += d_img / N / B
            ent[h] += e_img / N / B
    return dist, ent


@pytest.mark.parametrize("g,ps,npre", [(2, 8, 0), (2, 14, 5), (3, 16, 1), (4, 14, 0), (4, 8, 5), (7, 16, 1)])
def test_random_attention_matches_brute_force(g, ps, npre):
    gen = torch.Generator().manual_seed(g * 100 + ps + npre)
    T = g * g + npre
    logits = torch.randn(3, 2, T, T, generator=gen, dtype=torch.float64) * 3
    logits[..., 5 % T] = -torch.inf  # some exact zeros: 0 ln 0 = 0
    attn = logits.softmax(-1)
    d, e = brute_force(attn.numpy(), ps, npre, g)
    np.testing.assert_allclose(attention_distance(attn, ps, npre).numpy(), d, rtol=1e-10)
    np.testing.assert_allclose(attention_entropy(attn, npre).numpy(), e, rtol=1e-10)
    # float32 input: the same within float32 rounding
    np.testing.assert_allclose(attention_distance(attn.float(), ps, npre).numpy(), d, rtol=1e-5)


def neighbour_attention(g):
    pts = [(r, c) for r in range(g) for c in range(g)]
    A = np.array([[1.0 if abs(p[0] - q[0]) + abs(p[1] - q[1]) == 1 else 0.0 for q in pts] for p in pts])
    return A / A.sum(1, keepdims=True), A.sum(1)


@pytest.mark.parametrize("g,ps", list(itertools.product([2, 3, 4, 7], [8, 14, 16])))
@pytest.mark.parametrize("npre", [0, 1, 5])
def test_closed_forms(g, ps, npre):
    N, T = g * g, g * g + npre
    pts = [(r, c) for r in range(g) for c in range(g)]
    mean_pair = sum(math.dist(p, q) for p in pts for q in pts) / N**2
    nb, counts = neighbour_attention(g)
    heads = [np.full((N, N), 1 / N), np.eye(N), nb]
    attn = np.zeros((2, 3, T, T))
    rng = np.random.default_rng(g + ps + npre)
    for b in range(2):
        for h, P in enumerate(heads):
            m = 0.4 if npre else 0.0  # mass on prefix keys, removed by renormalisation
            attn[b, h, npre:, npre:] = P * (1 - m)
            if npre:
                attn[b, h, npre:, :npre] = m / npre
                attn[b, h, :npre] = rng.dirichlet(np.ones(T), size=npre)  # prefix queries: ignored
    a = torch.from_numpy(attn)
    np.testing.assert_allclose(
        attention_distance(a, ps, npre).numpy(), [ps * mean_pair, 0.0, ps], rtol=1e-12, atol=1e-12
    )
    np.testing.assert_allclose(
        attention_entropy(a, npre).numpy(), [math.log(N), 0.0, np.log(counts).mean()], rtol=1e-12, atol=1e-12
    )


def test_cls_heavy_rows_renormalise_to_a_known_answer():
    """0.9 on CLS, 0.1 on the 4-neighbours: after renormalisation, the neighbour pattern exactly."""
    g, ps = 3, 16
    nb, counts = neighbour_attention(g)
    T = g * g + 1
    a = np.zeros((1, 1, T, T))
    a[0, 0, 1:, 0] = 0.9
    a[0, 0, 1:, 1:] = 0.1 * nb
    a[0, 0, 0] = 1 / T
    a = torch.from_numpy(a)
    assert attention_distance(a, ps).item() == pytest.approx(ps, rel=1e-12)
    assert attention_entropy(a).item() == pytest.approx(np.log(counts).mean(), rel=1e-12)
    # without renormalisation the distance would have been 0.1 * ps: make sure we are not there
    assert attention_distance(a, ps).item() > 0.5 * ps


def test_streaming_equals_concatenated():
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 4, 17, 17, generator=gen).softmax(-1) for n in (3, 1, 5)]
    st = AttentionStats(patch_size=14, num_prefix_tokens=1)
    for b in batches:
        st.update(0, b)
        st.update(1, b.flip(-1))
    df = st.to_frame()
    assert list(df.columns) == ["layer", "head", "distance", "entropy", "n_images", "distance_ci95", "entropy_ci95"]
    assert len(df) == 8
    allb = torch.cat(batches)
    for layer, a in ((0, allb), (1, allb.flip(-1))):
        sub = df[df.layer == layer].sort_values("head")
        np.testing.assert_allclose(sub.distance.values, attention_distance(a, 14).numpy(), rtol=1e-6)
        np.testing.assert_allclose(sub.entropy.values, attention_entropy(a).numpy(), rtol=1e-6)
        assert (sub.n_images == 9).all()
    with pytest.raises(ValueError, match="heads"):
        st.update(0, torch.randn(1, 3, 17, 17).softmax(-1))


def test_attention_stats_over_a_dataloader(timm_models):
    vit, size, npre = timm_models["registers"]
    torch.manual_seed(1)
    images = torch.randn(10, 3, size, size)
    ds = torch.utils.data.TensorDataset(images, torch.arange(10))
    loader = torch.utils.data.DataLoader(ds, batch_size=4)
    df = attention_stats(Wrapper(model=vit), loader, max_images=9, progress=False)
    assert len(df) == 12 * 3 and (df.n_images == 9).all()
    maps = capture_attention(vit, images[:9])
    for layer in (0, 11):
        sub = df[df.layer == layer].sort_values("head")
        np.testing.assert_allclose(sub.distance.values, attention_distance(maps[layer], 16, npre).numpy(), rtol=1e-5)
        np.testing.assert_allclose(sub.entropy.values, attention_entropy(maps[layer], npre).numpy(), rtol=1e-5)
    # dict batches, and patch_size in other units scales distance only
    dicts = [{"image": images[:5]}, {"image": images[5:]}]
    df2 = attention_stats(vit, dicts, patch_size=1, progress=False)
    df3 = attention_stats(vit, images, progress=False, batch_size=3)
    np.testing.assert_allclose(df2.distance.values * 16, df3.distance.values, rtol=1e-5)
    np.testing.assert_allclose(df2.entropy.values, df3.entropy.values, rtol=1e-5)
    assert no_hooks(vit)
    with pytest.raises(TypeError, match="batch 0"):
        attention_stats(vit, [["not", "images"]], progress=False)
    with pytest.raises(ValueError, match="max_images"):
        attention_stats(vit, images, max_images=0, progress=False)


def test_collapse_summary(clip_model):
    df = attention_stats(clip_model, torch.randn(4, 3, 32, 32), progress=False)
    s = collapse_summary(df)
    assert list(s.layer) == [0, 1] and (s.n_heads == 2).all()
    for layer, sub in df.groupby("layer"):
        row = s[s.layer == layer].iloc[0]
        assert row.distance_std == pytest.approx(np.std(sub.distance.values))
        assert row.entropy_range == pytest.approx(np.ptp(sub.entropy.values))
        assert row.distance_mean == pytest.approx(sub.distance.mean())


# ---------------------------------------------------------------- figures


def test_figures_written(tmp_path, clip_model, timm_models):
    vit, size, _ = timm_models["cls"]
    dfs = {
        "CLIP": attention_stats(clip_model, torch.randn(4, 3, 32, 32), progress=False),
        "encoder": attention_stats(vit, torch.randn(4, 3, size, size), progress=False),
        "aligned": attention_stats(vit, torch.randn(4, 3, size, size), progress=False),
    }
    fig = plot_attention_stats(dfs, path=tmp_path / "stats")
    assert len(fig.axes) == 2 * 3
    assert all(len(ax.collections[0].get_offsets()) == len(df) for ax, df in zip(fig.axes[:3], dfs.values()))
    fig = plot_collapse_summary(dfs, path=tmp_path / "collapse.png")
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3
    fig = plot_attention_gallery(
        vit, torch.randn(3, 3, size, size), layers=[0, 5, 11], heads=[0, 2], query=(1, 2), path=tmp_path / "gallery.pdf"
    )
    assert len(fig.axes) == 3 * (1 + 3 * 2)
    for stem in ("stats", "collapse", "gallery"):
        assert (tmp_path / f"{stem}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{s}.{e}" for s in ("stats", "collapse", "gallery") for e in ("png", "pdf")
    )
    assert plot_attention_stats(dfs["CLIP"]) is not None  # a single DataFrame, nothing written
    with pytest.raises(ValueError, match="query"):
        plot_attention_gallery(vit, torch.randn(1, 3, size, size), query=(9, 9))
    with pytest.raises(ValueError, match="layers"):
        plot_attention_gallery(vit, torch.randn(1, 3, size, size), layers=[12])


# ---------------------------------------------------------------- benchmark script


def test_bench_script_runs():
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "attention_capture.py"),
            "--size",
            "32",
            "--batch",
            "2",
            "--repeats",
            "1",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert any(l.startswith("open_clip") for l in lines) and any(l.startswith("timm") for l in lines)
    m = re.fullmatch(r"ratio: (\d+\.\d+)", lines[-1])
    assert m and float(m.group(1)) > 0
