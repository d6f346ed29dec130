"""cskd.models with real open_clip / timm factories (tiny random-init configs), CPU only."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from cskd.models import (
    TEST_CLIP,
    TOY_CLIP,
    CLIPTeacher,
    Encoder,
    IAAHead,
    IAAModel,
    Projector,
    UnknownModelError,
    WeightsUnavailableError,
    clip_encoder,
    clip_teacher,
    encoder,
    model_info,
)


@pytest.fixture(scope="module")
def teacher():
    return clip_teacher(TEST_CLIP)


def test_teacher_shapes_and_attributes(teacher):
    assert isinstance(teacher, CLIPTeacher)
    out = teacher(torch.randn(3, 3, 32, 32))
    assert out.pooled.shape == (3, 32) and out.tokens.shape == (3, 16, 64)
    assert (teacher.image_size, teacher.patch_size, teacher.grid, teacher.width) == (32, 8, (4, 4), 64)
    assert len(teacher.mean) == 3 and len(teacher.std) == 3


def test_teacher_frozen_and_always_eval(teacher):
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    out = teacher(x)
    assert not out.pooled.requires_grad and not out.tokens.requires_grad
    # deterministic in "train" mode too (no dropout active)
    torch.testing.assert_close(teacher(x.detach()).pooled, out.pooled)


def test_teacher_tokens_match_output_tokens_path(teacher):
    """Our single-pass tokens equal open_clip's own `output_tokens` forward (ln_post applied)."""
    x = torch.randn(2, 3, 32, 32)
    v = teacher.clip.visual
    v.output_tokens = True
    try:
        pooled, tokens = v(x)
    finally:
        v.output_tokens = False
    out = teacher(x)
    torch.testing.assert_close(out.pooled, pooled)
    torch.testing.assert_close(out.tokens, tokens)


def test_toy_teacher_and_zero_shot_text():
    t = clip_teacher(TOY_CLIP)
    out = t(torch.randn(1, 3, 64, 64))
    assert out.pooled.shape == (1, 128) and out.tokens.shape == (1, 64, 128) and t.grid == (8, 8)
    txt = t.encode_text(["a bad photo", "a good photo"])
    assert txt.shape == (2, 128)
    assert t.tokenizer(["a good photo"]).shape == (1, 40)


def _run_offline(code, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=240
    )


def test_offline_weights_errors_are_clear(tmp_path):
    """A known tag with no network fails at once (no hang) with an actionable message."""
    code = """
        import json
        from cskd.models import clip_teacher, encoder, WeightsUnavailableError
        msgs = {}
        for key, fn in [("clip", lambda: clip_teacher("ViT-B-32", pretrained="laion2b_s34b_b79k")),
                        ("timm", lambda: encoder("resnet18", pretrained=True))]:
            try: fn(); msgs[key] = None
            except WeightsUnavailableError as e: msgs[key] = str(e)
        print(json.dumps(msgs))
    """
    r = _run_offline(code, tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    msgs = json.loads(r.stdout.strip().splitlines()[-1])
    for key, name, tag in [("clip", "ViT-B-32", "laion2b_s34b_b79k"), ("timm", "resnet18", "True")]:
        m = msgs[key]
        assert m is not None, f"{key}: no error raised"
        for needle in (
            name,
            tag,
            "HF_HOME",
            "HF_HUB_CACHE",
            "HF_HUB_OFFLINE=1",
            "not in the hub cache",
            "--student-pretrained",
        ):
            assert needle in m, (needle, m)


def test_tokenizer_works_offline(tmp_path):
    r = _run_offline(
        """
        import open_clip, cskd.models
        print(open_clip.get_tokenizer('cskd-test-vit')(['a photo of a cat']).tolist()[0][:3])
    """,
        tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().startswith("[49406,")  # start-of-text token, then real BPE ids


def test_unknown_names_and_tags():
    with pytest.raises(UnknownModelError, match="ViT-B-16"):
        clip_teacher("ViT-B-61")
    with pytest.raises(UnknownModelError, match="cskd-test-vit"):
        clip_teacher("cskd-tset-vit")
    with pytest.raises(UnknownModelError, match="convnext_atto"):
        encoder("convnext_ato")
    with pytest.raises(WeightsUnavailableError, match="tags for this model: openai"):
        clip_teacher("ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(WeightsUnavailableError, match="no such file"):
        encoder("resnet18", pretrained="/does/not/exist.safetensors")


def test_local_weights_files(tmp_path, teacher):
    f = tmp_path / "clip.safetensors"
    save_file(teacher.clip.state_dict(), str(f))
    t2 = clip_teacher(TEST_CLIP, pretrained=str(f))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(t2(x).tokens, teacher(x).tokens)
    r = encoder("resnet18")
    g = tmp_path / "r18.safetensors"
    save_file(r.model.state_dict(), str(g))
    r2 = encoder("resnet18", pretrained=str(g))
    torch.testing.assert_close(r2.model.conv1.weight, r.model.conv1.weight)


SWIN_TINY = dict(window_size=4, embed_dim=24, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


@pytest.mark.parametrize(
    "name,img,kw,dim,token_dim,grid",
    [
        ("vit_tiny_patch16_224", 32, {}, 192, 192, (2, 2)),
        ("vit_tiny_patch16_224", 64, {}, 192, 192, (4, 4)),
        ("resnet18", 64, {}, 512, 512, (2, 2)),
        ("convnext_atto", 64, {}, 320, 320, (2, 2)),
        ("mobilenetv3_small_050", 64, {}, 1024, 288, (2, 2)),
        ("swin_tiny_patch4_window7_224", 64, SWIN_TINY, 192, 192, (2, 2)),  # a shrunken Swin: NHWC features
    ],
)
def test_timm_encoders(name, img, kw, dim, token_dim, grid):
    e = encoder(name, img_size=img, **kw).eval()
    assert isinstance(e, Encoder) and (e.dim, e.token_dim, e.image_size) == (dim, token_dim, img)
    x = torch.randn(2, 3, img, img)
    assert e(x).shape == (2, dim)
    tokens, g = e.forward_tokens(x)
    assert g == grid and tokens.shape == (2, grid[0] * grid[1], token_dim)
    if name.startswith(("resnet", "swin")):  # their pooled features are the plain mean of the map
        torch.testing.assert_close(e(x), tokens.mean(1), rtol=1e-4, atol=1e-4)


def test_vit_tokens_drop_prefix():
    e = encoder("vit_tiny_patch16_224", img_size=32, reg_tokens=2).eval()
    x = torch.randn(1, 3, 32, 32)
    assert e.num_prefix_tokens == 3
    tokens, g = e.forward_tokens(x)
    assert g == (2, 2) and tokens.shape == (1, 4, 192)
    torch.testing.assert_close(tokens, e.model.forward_features(x)[:, 3:])


def test_clip_encoder_trainable(teacher, tmp_path):
    f = tmp_path / "clip.safetensors"
    save_file(teacher.clip.state_dict(), str(f))
    ce = clip_encoder(TEST_CLIP, pretrained=str(f))
    assert ce.training and all(p.requires_grad for p in ce.parameters())
    x = torch.randn(2, 3, 32, 32)
    pooled = ce(x)
    assert pooled.shape == (2, 64)
    pooled.sum().backward()
    assert ce.model.conv1.weight.grad is not None
    ce.eval()
    torch.testing.assert_close(ce(x) @ teacher.clip.visual.proj, teacher(x).pooled)
    torch.testing.assert_close(ce.forward_tokens(x)[0], teacher(x).tokens)


def test_projector_resizes_student_grid_to_teacher(teacher):
    student = encoder("vit_tiny_patch16_224", img_size=32)  # 2x2 grid; teacher: 4x4
    p = Projector(student.token_dim, teacher.width, "tokens", out_grid=teacher.grid)
    x = torch.randn(2, 3, 32, 32)
    y = p(*student.forward_tokens(x))
    assert y.shape == teacher(x).tokens.shape
    # a constant map stays constant after the bilinear resize
    const = torch.ones(1, 4, 192)
    out = p(const, (2, 2))
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    with pytest.raises(ValueError, match="expects 192 features"):
        p(torch.randn(1, 4, 100))


def test_phase1_style_alignment_reduces_loss(teacher):
    """A few steps of pooled-feature regression onto the frozen teacher lower the loss (wiring works)."""
    torch.manual_seed(0)
    student = encoder("resnet18", img_size=32)
    proj = Projector(student.dim, teacher.embed_dim)
    opt = torch.optim.Adam(list(student.parameters()) + list(proj.parameters()), lr=1e-3)
    x = torch.rand(8, 3, 32, 32)
    target = F.layer_norm(teacher(teacher.normalize(x)).pooled, (teacher.embed_dim,))
    losses = []
    for _ in range(15):
        loss = F.smooth_l1_loss(proj(student(student.normalize(x))), target, beta=2.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert not any(p.grad is not None for p in teacher.parameters())


def test_iaa_model():
    e = encoder("convnext_atto", img_size=32)
    m = IAAModel(e, IAAHead(e.dim, bins=10, dropout=0.2))
    x = torch.randn(4, 3, 32, 32)
    assert m(x).shape == (4, 10)
    mean = m.predict_mean(x)
    assert mean.shape == (4,) and ((mean >= 1) & (mean <= 10)).all()
    bb, hd = set(map(id, m.backbone_parameters())), set(map(id, m.head_parameters()))
    assert not bb & hd and len(bb | hd) == len(list(m.parameters()))
    opt = torch.optim.SGD(
        [{"params": m.backbone_parameters(), "lr": 1e-4}, {"params": m.head_parameters(), "lr": 1e-2}], momentum=0.5
    )
    assert [g["lr"] for g in opt.param_groups] == [1e-4, 1e-2]
    info = model_info(m)
    assert info["params"] == info["backbone"] + info["head"] and info["head"] == 320 * 10 + 10
    s = IAAModel(e, IAAHead(e.dim, kind="scalar"))
    assert s(x).shape == (4,)
    with pytest.raises(ValueError, match="kind"):
        IAAHead(8, kind="ordinal")
