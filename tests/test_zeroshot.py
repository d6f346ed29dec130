"""cskd.zeroshot with a real tiny open_clip model (TEST_CLIP, random weights, offline tokenizer) and real JPEGs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cskd.data import IAADataset, eval_transform, read_ava
from cskd.models import TEST_CLIP, clip_teacher
from cskd.toy import CLASSES, make_toy_world
from cskd.zeroshot import (
    DEFAULT_PROMPTS,
    GENERIC_CLASSES,
    PromptFileError,
    PromptSet,
    ZeroShotScorer,
    load_prompts,
    zero_shot_eval,
)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return clip_teacher(TEST_CLIP)


@pytest.fixture(scope="module")
def images():
    torch.manual_seed(1)
    return torch.randn(6, 3, 32, 32)


def _txt(teacher, texts):
    return F.normalize(teacher.encode_text(texts).float(), dim=-1)


def _img(teacher, x):
    return F.normalize(teacher.clip.encode_image(x).float(), dim=-1)


@pytest.mark.parametrize(
    "name,k",
    [("paper", 2), ("atrocious", 1), ("horrible", 1), ("ensemble", 1), ("content", 1), ("content-ensemble", 1)],
)
def test_every_shipped_set_scores_with_the_right_shapes(teacher, images, name, k):
    zs = ZeroShotScorer(teacher, name)
    assert zs.text_embeddings.shape == (2, k, 32)
    torch.testing.assert_close(zs.text_embeddings.norm(dim=-1), torch.ones(2, k))
    out = zs.score(images)
    assert out["p_good"].shape == (6,) and out["score"].shape == (6,)
    assert out["pair_p_good"].shape == (6, k) and out["cos"].shape == (6, 2, k)
    assert ((out["p_good"] >= 0) & (out["p_good"] <= 1)).all()


def test_continuous_score_is_the_papers_sum(teacher, images):
    zs = ZeroShotScorer(teacher, "paper")
    img = _img(teacher, images)
    bad = _txt(teacher, ["A atrocious picture", "A horrible picture"])
    good = _txt(teacher, ["A outstanding picture", "A smashing picture"])
    texts = torch.cat([bad, good])
    w = torch.tensor([-1.0, -1.0, 1.0, 1.0])
    expected = (w * 100 * (img @ texts.T)).sum(1)
    torch.testing.assert_close(zs.score(images)["score"], expected, atol=1e-3, rtol=1e-4)


def test_model_scale_uses_the_models_logit_scale(teacher, images):
    zs = ZeroShotScorer(teacher, "horrible", scale="model")
    s = teacher.clip.logit_scale.exp().item()
    assert zs.scale == pytest.approx(s) and s != pytest.approx(100.0)
    img = _img(teacher, images)
    t = _txt(teacher, ["A horrible picture", "A smashing picture"])
    torch.testing.assert_close(zs.score(images)["score"], s * (img @ t[1] - img @ t[0]), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="scale"):
        ZeroShotScorer(teacher, "horrible", scale=-1)


def test_binary_decision_is_the_pairwise_softmax(teacher, images):
    zs = ZeroShotScorer(teacher, "paper")
    out = zs.score(images)
    img = _img(teacher, images)
    for k, (b, g) in enumerate(
        [("A atrocious picture", "A outstanding picture"), ("A horrible picture", "A smashing picture")]
    ):
        t = _txt(teacher, [b, g])
        p = (100 * img @ t.T).softmax(-1)[:, 1]
        torch.testing.assert_close(out["pair_p_good"][:, k], p, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["p_good"], out["pair_p_good"].mean(1))
    # one pair: P(good) = sigmoid(score), so "good" <=> score > 0
    one = ZeroShotScorer(teacher, "horrible").score(images)
    torch.testing.assert_close(one["p_good"], torch.sigmoid(one["score"]), atol=1e-5, rtol=1e-4)
    assert torch.equal(one["p_good"] > 0.5, one["score"] > 0)


def test_ensemble_is_the_renormalised_mean_of_each_side(teacher, images):
    spec = DEFAULT_PROMPTS["ensemble"]
    zs = ZeroShotScorer(teacher, "ensemble")
    for side, prompts in enumerate((spec["bad"], spec["good"])):
        expected = F.normalize(_txt(teacher, prompts).mean(0), dim=-1)
        torch.testing.assert_close(zs.text_embeddings[side, 0], expected, atol=1e-5, rtol=1e-4)
    # an ensemble of the paper's pairs differs from scoring them pair by pair
    ens = ZeroShotScorer(teacher, "paper", ensemble=True)
    assert ens.text_embeddings.shape == (2, 1, 32)
    assert not torch.allclose(ens.score(images)["score"], ZeroShotScorer(teacher, "paper").score(images)["score"])


def test_content_aware_templates_are_filled_and_averaged(teacher):
    zs = ZeroShotScorer(teacher, "content", classes=CLASSES)
    filled = zs.prompts.expand("A horrible picture")
    assert filled == [f"A horrible picture, of a {c}" for c in CLASSES]
    expected = F.normalize(_txt(teacher, filled).mean(0), dim=-1)
    torch.testing.assert_close(zs.text_embeddings[0, 0], expected, atol=1e-5, rtol=1e-4)
    assert load_prompts("content").classes == GENERIC_CLASSES  # the default content list
    # several templates x classes, class placeholder in the prompt itself
    ps = load_prompts(
        dict(bad=["ugly {}"], good=["pretty {}"], templates=["{prompt}", "a photo: {prompt}"], classes=["dog", "cat"])
    )
    assert ps.expand("ugly {}") == ["ugly dog", "ugly cat", "a photo: ugly dog", "a photo: ugly cat"]
    # templates without a class placeholder ensemble phrasings only; braces in prompts are literal text
    ps = load_prompts(dict(bad=["bad {x}"], good=["good"], templates=["{prompt}!"]))
    assert ps.expand("bad {x}") == ["bad {x}!"] and ps.classes == ()


def test_score_is_invariant_to_image_embedding_scale(teacher, images):
    for name in ("paper", "ensemble", "content"):
        zs = ZeroShotScorer(teacher, name)
        e = teacher.clip.encode_image(images)
        a, b = zs.score_embeddings(e), zs.score_embeddings(0.01 * e)
        torch.testing.assert_close(a["score"], b["score"], atol=1e-3, rtol=1e-4)
        torch.testing.assert_close(a["p_good"], b["p_good"])
        torch.testing.assert_close(a["score"], zs.score(images)["score"], atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match=r"\(N, 32\)"):
        zs.score_embeddings(torch.randn(3, 7))


def test_prompt_files_yaml_json_txt(tmp_path, teacher):
    y = tmp_path / "mine.yaml"
    y.write_text(
        "bad:\n  - A dreadful picture\ngood:\n  - A lovely picture\ntemplates: ['{prompt}, of a {}']\nclasses: toy\n"
    )
    ps = load_prompts(y)
    assert isinstance(ps, PromptSet) and ps.name == "mine" and ps.classes == tuple(CLASSES)
    assert ps.expand("A dreadful picture")[0] == "A dreadful picture, of a circle"
    j = tmp_path / "p.json"
    j.write_text(json.dumps(dict(name="j", bad=["a", "b"], good=["c", "d"], ensemble=True)))
    assert load_prompts(j).ensemble and load_prompts(j).n_pairs == 1
    t = tmp_path / "pairs.txt"
    t.write_text(
        "# bad | good\nA atrocious picture | A outstanding picture\n\nA horrible picture\tA smashing picture\n"
    )
    ps = load_prompts(t)
    assert ps.bad == ("A atrocious picture", "A horrible picture") and ps.good[1] == "A smashing picture"
    assert ZeroShotScorer(teacher, t).text_embeddings.shape == (2, 2, 32)
    # the argument overrides the file's class list
    assert load_prompts(y, classes=["dog"]).expand("x") == ["x, of a dog"]


@pytest.mark.parametrize(
    "text,where",
    [
        ("bad: [a]\n", "key 'good': missing"),
        ("bad: a\ngood: [b]\n", "key 'bad': expected a non-empty list"),
        ("bad: []\ngood: [b]\n", "key 'bad': expected a non-empty list"),
        ("bad: [a, 3]\ngood: [b, c]\n", "key 'bad': item 1"),
        ("bad: [a]\ngood: [b]\ntemplates: ['{}, nice']\n", "key 'templates': item 0"),
        ("bad: [a]\ngood: [b]\nclasses: imagenet\n", "key 'classes': unknown class list 'imagenet'"),
        ("bad: [a]\ngood: [b]\nensemble: maybe\n", "key 'ensemble'"),
        ("bad: [a]\ngood: [b, c]\n", "key 'good': 2 prompts but 'bad' has 1"),
        ("bad: [a]\ngood: [b]\ngoood: [c]\n", "key 'goood': unknown key"),
        ("bad: [a\ngood: [b]\n", "cannot parse prompt file"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_malformed_prompt_files_name_file_and_key(tmp_path, text, where):
    f = tmp_path / "bad_prompts.yaml"
    f.write_text(text)
    with pytest.raises(PromptFileError) as e:
        load_prompts(f)
    assert str(f) in str(e.value) and where in str(e.value), str(e.value)


def test_malformed_txt_and_other_sources(tmp_path):
    f = tmp_path / "pairs.txt"
    f.write_text("ugly | pretty\nonly one side\n")
    with pytest.raises(PromptFileError, match=rf"{f}:2: expected 'bad prompt \| good prompt'"):
        load_prompts(f)
    with pytest.raises(PromptFileError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.yaml")
    with pytest.raises(PromptFileError, match="item 0 must be a"):
        load_prompts(["ugly", "pretty"])
    with pytest.raises(PromptFileError, match="load_prompts argument: key 'classes'"):
        load_prompts("content", classes="nope")
    with pytest.raises(TypeError):
        load_prompts(3)


def test_zero_shot_eval_on_a_toy_world(tmp_path, teacher):
    world = make_toy_world(tmp_path / "toy", 40, image_size=32, workers=1)
    labels = read_ava(world / "AVA.txt")
    ds = IAADataset(world / "images", labels, eval_transform(32, teacher.mean, teacher.std))
    calls = []
    h = teacher.clip.visual.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    try:
        m, df = zero_shot_eval(teacher, ds, "paper", batch_size=16, cache_dir=tmp_path / "cache", progress=False)
        m2, df2 = zero_shot_eval(teacher, ds, "paper", batch_size=16, cache_dir=tmp_path / "cache", progress=False)
    finally:
        h.remove()
    assert sum(calls) == 40  # the second evaluation read the cached embeddings
    assert m == m2 and m["n"] == 40 and len(df) == 40
    assert set(m) == {"acc", "srcc", "plcc", "n", "acc_pair0", "acc_pair1"}
    assert all(np.isfinite(v) for v in m.values())
    true = labels.set_index("image_id").loc[df.image_id, "mean"].to_numpy()
    np.testing.assert_allclose(df.true_mean, true)
    assert m["acc"] == pytest.approx(np.mean((df.p_good > 0.5) == (true > 5)))
    # the table agrees with scoring the images directly
    x = torch.stack([ds[i][0] for i in range(8)])
    direct = ZeroShotScorer(teacher, "paper").score(x)
    np.testing.assert_allclose(df.score[:8], direct["score"].numpy(), atol=0.05)  # float16 cache
    # threshold and a prebuilt scorer
    m3, _ = zero_shot_eval(teacher, ds, ZeroShotScorer(teacher, "horrible"), threshold=5.5, progress=False)
    assert "acc_pair0" not in m3 and 0 <= m3["acc"] <= 1


def test_raw_open_clip_model_needs_a_tokenizer(teacher, images):
    with pytest.raises(ValueError, match="tokenizer"):
        ZeroShotScorer(teacher.clip, "paper")
    raw = ZeroShotScorer(teacher.clip, "paper", tokenizer=teacher.tokenizer)
    torch.testing.assert_close(raw.score(images)["score"], ZeroShotScorer(teacher, "paper").score(images)["score"])
    with pytest.raises(TypeError, match="text tower"):
        ZeroShotScorer(teacher.clip.visual, "paper", tokenizer=teacher.tokenizer)


def test_save_prompts_round_trip_and_unequal_ensembles(tmp_path):
    from cskd.zeroshot import save_prompts

    spec = dict(name="mine", bad=["a {}", "b {}", "c {}"], good=["d {}"], classes=["x", "y"], ensemble=True)
    f = save_prompts(spec, tmp_path / "sub" / "mine.yaml")
    ps, ref = load_prompts(f), load_prompts(spec)
    assert (ps.bad, ps.good, ps.classes, ps.ensemble, ps.name) == (ref.bad, ref.good, ref.classes, True, "mine")
    assert not list((tmp_path / "sub").glob("*.tmp"))
    with pytest.raises(PromptFileError, match="used in pairs"):
        load_prompts(spec, ensemble=False)
