"""The shipped toy pre-trained weights (`cskd/toy_weights/`): each card's quality figures re-measured from the
shipped file on the quality world (a seed no training used), the targets met, and the card's settings equal to
what the code would train now, so stale or damaged weights fail `make test`. `make pretrain` regenerates them."""

import json
import shutil

import pytest
import torch

import cskd.models
from cskd.models import TOY_WEIGHTS_DIR, ToyWeightsError, build_encoder, clip_teacher, toy_card
from cskd.runs import file_sha1
from cskd.toy_pretrain import (
    PRETRAIN_SEED_OFFSET,
    QUALITY_TARGETS,
    RECIPES,
    TOY_CLIP,
    TOY_LARGE,
    TOY_STUDENT,
    measure_quality,
    settings_hash,
    stale_settings,
    toy_clip,
    toy_imagenet,
)

MODELS = list(RECIPES)
# the figures each shipped model must reach (all of its targets, for every toy model)
MEETS_TARGETS = {
    TOY_LARGE: ("heldout_accuracy",),
    TOY_STUDENT: ("heldout_accuracy",),
    TOY_CLIP: ("zero_shot_srcc", "probe_srcc"),
}


@pytest.mark.parametrize("model", MODELS)
def test_card_settings_are_the_codes(model):
    card = toy_card(model)
    assert stale_settings(model) == {}, f"{model}: run `make pretrain` and commit cskd/toy_weights/"
    assert card["settings_hash"] == settings_hash(card["settings"])
    assert card["pretrain_world_seed"] == PRETRAIN_SEED_OFFSET + card["settings"]["seed"]
    assert card["sha1"] == file_sha1(TOY_WEIGHTS_DIR / card["file"])
    assert card["seconds"] > 0 and card["steps"] > 0 and len(card["loss"]) == card["settings"]["epochs"]
    assert card["quality_targets"] == QUALITY_TARGETS[model]


@pytest.mark.parametrize("model", MODELS)
def test_card_quality_remeasured(model, tmp_path_factory):
    card = toy_card(model)
    got = measure_quality(model, TOY_WEIGHTS_DIR / card["file"], tmp_path_factory.getbasetemp() / "quality")
    for k, target in QUALITY_TARGETS[model].items():
        assert got[k] == pytest.approx(card["quality"][k], abs=2e-3), (model, k, got[k], card["quality"][k])
        assert card["targets_met"][k] == (got[k] >= target), (model, k)  # the card says truly whether it meets it
        if k in MEETS_TARGETS[model]:
            assert got[k] >= target, f"{model}: {k} = {got[k]} is below the target {target}"


def test_recipe_settings_return_the_shipped_files_at_once(tmp_path):
    assert toy_clip(cache_dir=tmp_path) == TOY_WEIGHTS_DIR / f"{TOY_CLIP}.safetensors"
    for m in (TOY_LARGE, TOY_STUDENT):
        assert toy_imagenet(m, cache_dir=tmp_path) == TOY_WEIGHTS_DIR / f"{m}.safetensors"
    assert not list(tmp_path.iterdir())  # nothing trained, nothing cached


def test_pretrained_toy_loads_the_shipped_weights():
    t = clip_teacher(TOY_CLIP, "toy")
    assert t(torch.zeros(1, 3, 64, 64)).pooled.shape == (1, 128)
    for m in (TOY_LARGE, TOY_STUDENT):
        enc = build_encoder(m, "toy", image_size=64)
        ref = build_encoder(m, str(TOY_WEIGHTS_DIR / f"{m}.safetensors"), image_size=64)
        assert all(torch.equal(a, b) for a, b in zip(enc.state_dict().values(), ref.state_dict().values()))
    with pytest.raises(ToyWeightsError, match="no shipped toy weights for 'resnet18'"):
        build_encoder("resnet18", "toy")


@pytest.fixture
def shipped_copy(tmp_path, monkeypatch):
    "A copy of the shipped folder that the code reads instead."
    folder = tmp_path / "toy_weights"
    shutil.copytree(TOY_WEIGHTS_DIR, folder)
    monkeypatch.setattr(cskd.models, "TOY_WEIGHTS_DIR", folder)
    return folder


def test_damaged_or_missing_shipped_file_names_it_and_the_command(shipped_copy):
    f = shipped_copy / f"{TOY_STUDENT}.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ToyWeightsError, match=rf"{f}: damaged.*python -m cskd pretrain"):
        toy_imagenet(TOY_STUDENT)
    f.unlink()
    with pytest.raises(ToyWeightsError, match=rf"{f}: missing.*python -m cskd pretrain"):
        build_encoder(TOY_STUDENT, "toy")


def test_stale_card_says_which_settings_differ(shipped_copy):
    card = shipped_copy / f"{TOY_STUDENT}.json"
    info = json.loads(card.read_text())
    info["settings"]["epochs"] += 1
    info["settings_hash"] = settings_hash(info["settings"])
    card.write_text(json.dumps(info))
    assert stale_settings(TOY_STUDENT, shipped_copy) == {
        "epochs": (RECIPES[TOY_STUDENT]["epochs"] + 1, RECIPES[TOY_STUDENT]["epochs"])
    }
    with pytest.raises(ToyWeightsError, match="other settings than the code's recipe.*epochs: card"):
        toy_imagenet(TOY_STUDENT)
