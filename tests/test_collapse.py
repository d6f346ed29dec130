"""The feature-collapse experiment notebook end to end through papermill (real toy JPEGs, real tiny open_clip /
timm models, real alignment and fine-tuning runs), and `cskd.collapse.load_vit` on the run folders it wrote."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cskd.collapse import collapse_study, load_vit, split_images
from cskd.checkpoint import find_weights
from cskd.kernels import PAPERMILL_KERNEL
from cskd.toy import make_toy_world

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "nbs" / "experiments" / "collapse.ipynb"
DEFAULT_MODELS = {"clip": 6, "vit_init": 6, "vit_aligned": 6, "vit_aligned_iaa": 6, "clip_iaa": 6}  # label -> layers
FIGURES = ["collapse_attention_stats", "collapse_summary"] + [f"collapse_gallery_{m}" for m in DEFAULT_MODELS]


def execute(tmp, name, **parameters):
    import papermill as pm

    return pm.execute_notebook(
        str(NB),
        str(tmp / f"{name}.ipynb"),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=parameters,
    )


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    "The notebook with its defaults on a toy world of the default size (600 images)."
    tmp = tmp_path_factory.mktemp("collapse")
    make_toy_world(tmp / "toy", 600, workers=1)
    execute(tmp, "default", run_dir=str(tmp / "run"), data_root=str(tmp / "toy"))
    return tmp


def test_default_run_writes_metrics_and_figures(default_run):
    run = default_run / "run"
    m = json.loads((run / "metrics.json").read_text())
    assert m["images"] == 64
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in m.values()), m
    # cskd-toy-vit and cskd_toy_vit_p8 alike: 64 px on the 8x8 grid
    for p, layers in DEFAULT_MODELS.items():
        assert m[f"{p}/layers"] == layers and m[f"{p}/images"] == 64
        n = 64
        for k in range(layers):
            for c in ("distance", "entropy"):
                assert 0 <= m[f"{p}/layer{k}/{c}_std"] <= m[f"{p}/layer{k}/{c}_range"], (p, k, c)
            # entropy of a distribution over n patches is at most ln n; distance at most the image diagonal
            assert 0 < m[f"{p}/layer{k}/entropy_mean"] <= math.log(n) + 1e-6, (p, k)
            assert 0 < m[f"{p}/layer{k}/distance_mean"] < 64 * math.sqrt(2), (p, k)
        assert m[f"{p}/distance_std_last"] == m[f"{p}/layer{layers - 1}/distance_std"]
        assert m[f"{p}/entropy_std_first"] == m[f"{p}/layer0/entropy_std"]
    assert m["standins/align_eval_cosine_after"] > m["standins/align_eval_cosine_before"]  # alignment happened
    for f in FIGURES:
        for ext in ("png", "pdf"):
            assert (run / "figures" / f"{f}.{ext}").stat().st_size > 5000, (f, ext)
    assert (default_run / "toy" / "splits" / "test.txt").exists()


def test_load_vit_restores_the_runs_weights(default_run):
    s = default_run / "run" / "standins"
    sd = load_file(str(find_weights(s / "align")))
    enc = load_vit(f"align:{s / 'align'}")
    assert enc.image_size == 64 and not enc.training
    for k, v in enc.state_dict().items():
        assert torch.equal(v, sd["encoder." + k]), k
    for run in ("vit_aligned_iaa", "clip_iaa"):
        sd = load_file(str(find_weights(s / run)))
        assert "best" in str(find_weights(s / run))
        enc = load_vit(f"finetune:{s / run}")
        for k, v in enc.state_dict().items():
            assert torch.equal(v, sd["encoder." + k]), (run, k)
    stats = collapse_study(
        {"a": f"align:{s / 'align'}", "b": f"finetune:{s / 'vit_aligned_iaa'}"}, split_images(default_run / "toy", 4)
    )
    assert not stats["a"].distance.equals(stats["b"].distance)  # fine-tuning changed the attention


def test_given_specs_and_figures_dir(default_run, tmp_path):
    s = default_run / "run" / "standins"
    models = {
        "Tiny CLIP": "clip:cskd-test-vit",
        "ViT init": "timm:vit_tiny_patch16_224",
        "aligned": f"align:{s / 'align'}",
        "IAA": f"finetune:{s / 'vit_aligned_iaa'}",
    }
    execute(
        tmp_path,
        "given",
        run_dir=str(tmp_path / "run"),
        data_root=str(default_run / "toy"),
        models=models,
        images=8,
        gallery_images=2,
        image_size=32,
        figures_dir=str(tmp_path / "figs"),
    )
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert (
        m["tiny_clip/layers"] == 2 and m["vit_init/layers"] == 12 and m["aligned/images"] == 8 and m["iaa/heads"] == 4
    )
    assert not any(k.startswith("standins/") for k in m) and not (tmp_path / "run" / "standins").exists()
    for f in ["collapse_attention_stats", "collapse_summary", "collapse_gallery_tiny_clip", "collapse_gallery_iaa"]:
        assert (tmp_path / "figs" / f"{f}.png").exists() and (tmp_path / "figs" / f"{f}.pdf").exists(), f
    assert not (tmp_path / "run" / "figures").exists()


@pytest.mark.parametrize(
    "parameters, words",
    [
        (dict(models={"X": "hf:some-vit"}), ["parameter 'models'", "'X'", "unknown prefix 'hf:'"]),
        (dict(models={"X": "align:/no/such/run"}), ["parameter 'models'", "config.json does not exist"]),
        (dict(images=0), ["parameter 'images'", "integer >= 1"]),
        (dict(gallery_images=9, images=4), ["parameter 'gallery_images'", "at most images=4"]),
        (dict(batch_sise=8), ["unknown parameter 'batch_sise'", "did you mean 'batch_size'"]),
    ],
)
def test_bad_parameters_fail_early_naming_them(tmp_path, parameters, words):
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as e:
        execute(tmp_path, "bad", run_dir=str(tmp_path / "run"), data_root=str(tmp_path / "toy"), **parameters)
    for w in words:
        assert w in str(e.value), (w, str(e.value)[-500:])
    assert not (tmp_path / "toy").exists() and not (tmp_path / "run").exists()  # before any data or training
