"""The "CLIP knows image aesthetics" study: its helpers (cskd.clip_study) and the experiment notebook end to end
through papermill (real toy JPEGs, real open_clip / timm models, the shipped toy weights)."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cskd.clip_study import (
    PAPER_RECIPE,
    ClipStudyConfig,
    epochs_run,
    paper_finetune_config,
    plot_convergence,
    results_table,
    subset_splits,
)
from cskd.config import ConfigError, from_namespace, load_config
from cskd.data import read_split
from cskd.iaa import FinetuneConfig, finetune
from cskd.models import TEST_CLIP
from cskd.kernels import PAPERMILL_KERNEL
from cskd.runs import save_table
from cskd.toy import make_toy_world

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "nbs" / "experiments" / "clip_knows.ipynb"


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_world(tmp_path_factory.mktemp("w") / "toy", 120, image_size=32, workers=1)


def test_paper_finetune_config_fields():
    c = paper_finetune_config("clip:ViT-B-32")
    assert isinstance(c, FinetuneConfig) and c.encoder == "clip:ViT-B-32"
    assert (c.optimizer, c.momentum, c.lr, c.head_lr) == ("sgd", 0.5, 1e-4, 1e-2)
    assert (c.batch_size, c.epochs, c.patience, c.best_metric, c.best_mode) == (128, 50, 10, "val_emd2", "min")
    assert (c.head, c.loss, c.weight_decay, c.schedule, c.warmup_epochs, c.grad_clip) == (
        "dist",
        "emd",
        0.0,
        "constant",
        0.0,
        None,
    )
    c2 = paper_finetune_config("resnet18", epochs=3, lr=1e-3)
    assert (c2.epochs, c2.lr, c2.momentum) == (3, 1e-3, 0.5)
    assert PAPER_RECIPE["epochs"] == 50  # overrides never leak into the recipe
    with pytest.raises(ValueError, match="optimizer"):
        paper_finetune_config("resnet18", optimizer="lamb")


def test_recipe_runs_through_finetune_and_logs_per_epoch(toy, tmp_path):
    splits = subset_splits(toy, tmp_path / "splits", n_train=64, n_val=16, n_test=20).resolve()
    run = tmp_path / "ft"
    cfg = paper_finetune_config(
        f"clip:{TEST_CLIP}",
        data_root=str(toy),
        image_size=32,
        epochs=2,
        batch_size=16,
        train_split=str(splits / "train.txt"),
        val_split=str(splits / "val.txt"),
        test_split=str(splits / "test.txt"),
        progress=False,
        run_dir=str(run),
    )
    r = finetune(cfg)
    assert np.isfinite(r["test_emd2"]) and r["steps"] == 2 * (64 // 16)
    e = epochs_run(run)
    assert e["epochs"] == 2 and e["best_epoch"] in (1.0, 2.0) and np.isfinite(e["best"])
    assert len(pd.read_csv(run / "predictions_test.csv")) == 20
    fig = plot_convergence({"a": run, "b": run}, ("val_srcc", "val_emd2"), tmp_path / "fig" / "conv")
    assert [len(ax.lines) for ax in fig.axes] == [2, 2]


def _metrics_file(d, curve):
    d.mkdir(parents=True)
    lines = []
    for i, (srcc, emd) in enumerate(curve, 1):
        lines.append(dict(step=10 * i, epoch=float(i), lr=0.01, loss=1.0 / i))
        lines.append({"step": 10 * i, "epoch": float(i), "eval/val_srcc": srcc, "eval/val_emd2": emd})
    (d / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
    return d


def test_plot_convergence_one_line_per_model(tmp_path):
    a = _metrics_file(tmp_path / "clip", [(0.2, 0.30), (0.5, 0.20), (0.55, 0.21), (0.5, 0.22)])
    b = _metrics_file(tmp_path / "imagenet", [(0.1, 0.40), (0.2, 0.35)])
    fig = plot_convergence({"clip": a, "imagenet": b}, ("val_srcc", "val_emd2"), tmp_path / "figs" / "convergence")
    assert len(fig.axes) == 2
    for ax, key in zip(fig.axes, ("val_srcc", "val_emd2")):
        assert [l.get_label() for l in ax.lines] == ["clip", "imagenet"]
        assert list(ax.lines[0].get_xdata()) == [1.0, 2.0, 3.0, 4.0] and list(ax.lines[1].get_xdata()) == [1.0, 2.0]
    assert list(fig.axes[1].lines[0].get_ydata()) == [0.30, 0.20, 0.21, 0.22]
    for ext in ("png", "pdf"):
        assert (tmp_path / "figs" / f"convergence.{ext}").stat().st_size > 1000
    assert epochs_run(a) == dict(epochs=4, best_epoch=2.0, best=0.20)
    assert epochs_run(a, "val_srcc", "max")["best_epoch"] == 3.0
    one = plot_convergence({"clip": a}, "val_srcc")
    assert len(one.axes) == 1 and len(one.axes[0].lines) == 1
    with pytest.raises(KeyError, match="eval/val_plcc"):
        plot_convergence({"clip": a}, "val_plcc")
    with pytest.raises(FileNotFoundError):
        plot_convergence({"x": tmp_path / "nope"}, "val_srcc")


def test_results_table_and_files(tmp_path):
    t = results_table(
        [
            dict(step="zero-shot", model="clip:m", variant="paper", srcc=0.1, plcc=0.2, acc=0.6, n_test=5),
            dict(step="fine-tune", model="r18", variant="paper recipe", srcc=0.3, emd2=0.1, epochs=4, best_epoch=2.0),
        ]
    )
    assert list(t.columns[:3]) == ["step", "model", "variant"] and "emd2" in t and "epochs" in t
    csv, md = save_table(t, tmp_path / "results")
    back = pd.read_csv(csv)
    assert back.shape == (2, len(t.columns)) and back.srcc.tolist() == [0.1, 0.3]
    lines = md.read_text().splitlines()
    assert len(lines) == 4 and lines[0].startswith("| step | model | variant | srcc")
    assert "| zero-shot | clip:m | paper | 0.1000 |" in lines[2]
    with pytest.raises(ValueError, match="variant"):
        results_table([dict(step="x", model="y")])


def test_subset_splits_takes_first_ids(toy, tmp_path):
    out = subset_splits(toy, tmp_path / "s", n_train=10, n_val=None, n_test=7)
    assert read_split(out / "train.txt") == read_split(toy / "splits" / "train.txt")[:10]
    assert read_split(out / "val.txt") == read_split(toy / "splits" / "val.txt")
    assert read_split(out / "test.txt") == read_split(toy / "splits" / "test.txt")[:7]


def test_study_config_validation():
    assert from_namespace(ClipStudyConfig, dict(prompt_sets="paper,ensemble")).prompt_sets == ["paper", "ensemble"]
    for bad, name in (
        (dict(prompt_sets=["paper", "nope"]), "'prompt_sets'"),
        (dict(clip_model="ViT-B-33"), "'clip_model'"),
        (dict(imagenet_model="resnet_nope"), "'imagenet_model'"),
        (dict(class_names="imagenet1k"), "'class_names'"),
        (dict(probe_methods=["lasso"]), "'probe_methods'"),
        (dict(n_train=0), "'n_train'"),
        (dict(epochs="many"), "'epochs'"),
        (dict(promt_sets=["paper"]), "'promt_sets'"),
    ):
        with pytest.raises(ConfigError, match=name):
            from_namespace(ClipStudyConfig, bad)


def test_real_scale_config_validates():
    cfg = load_config(ClipStudyConfig, ROOT / "configs" / "clip_knows_ava_vitb32.yaml")
    assert (cfg.clip_model, cfg.clip_pretrained, cfg.imagenet_pretrained, cfg.image_size) == (
        "ViT-B-32",
        "openai",
        True,
        224,
    )
    assert (cfg.epochs, cfg.patience, cfg.batch_size, cfg.lr, cfg.head_lr) == (50, 10, 128, 1e-4, 1e-2)
    assert cfg.n_train is None and cfg.data_root.startswith("/data/ava") and "content" in cfg.prompt_sets


def test_experiment_notebook_runs_and_validates(tmp_path):
    import papermill as pm

    run = tmp_path / "run"
    make_toy_world(tmp_path / "toy", 800, workers=1)  # a toy world is written only at the default data/toy
    pm.execute_notebook(
        str(NB),
        str(tmp_path / "out.ipynb"),
        cwd=str(ROOT),
        **PAPERMILL_KERNEL,
        progress_bar=False,
        parameters=dict(run_dir=str(run), data_root=str(tmp_path / "toy")),
    )
    m = json.loads((run / "metrics.json").read_text())
    keys = [f"zeroshot_{s}_{k}" for s in ("paper", "ensemble", "content") for k in ("srcc", "plcc", "acc")]
    keys += [f"probe_{b}{o}_{k}" for b in ("clip", "imagenet") for o in ("", "_ols") for k in ("srcc", "plcc", "acc")]
    keys += [
        f"finetune_{b}_{k}"
        for b in ("clip", "imagenet")
        for k in ("test_srcc", "test_plcc", "test_acc", "test_emd2", "epochs", "best_epoch")
    ]
    for k in keys:
        assert k in m and m[k] is not None and math.isfinite(m[k]), k
    assert m["finetune_clip_epochs"] == 3 and m["finetune_imagenet_epochs"] == 3 and m["random_weights"] == 0
    assert m["probe_clip_dim"] == 128 and m["probe_imagenet_dim"] == 128
    t = pd.read_csv(run / "results.csv")
    assert len(t) == 3 + 2 * 2 + 2
    assert t.groupby("step").size().to_dict() == {"zero-shot": 3, "linear probe": 4, "fine-tune": 2}
    assert set(t[t.step == "fine-tune"].model) == {"clip:cskd-toy-vit", "cskd_toy_vit_p8"}
    assert t.srcc.notna().all() and (run / "results.md").read_text().count("\n") == len(t) + 2
    for f in ("convergence", "summary"):
        for ext in ("png", "pdf"):
            assert (run / "figures" / f"{f}.{ext}").stat().st_size > 1000, (f, ext)
    for label in ("clip", "imagenet"):
        assert epochs_run(run / f"finetune_{label}")["epochs"] == 3
    out = (tmp_path / "out.ipynb").read_text()
    printed = "".join("".join(o.get("text", "")) for c in json.loads(out)["cells"] for o in c.get("outputs", []))
    assert "WARNING: random-init" not in printed  # the defaults are the shipped toy models, not random weights
    # a bad parameter fails in the validation cell, before anything is written
    for params, name in ((dict(prompt_sets=["paper", "beautifull"]), "'prompt_sets'"), (dict(epoch=3), "'epoch'")):
        bad = tmp_path / "bad"
        with pytest.raises(pm.PapermillExecutionError) as e:
            pm.execute_notebook(
                str(NB),
                str(tmp_path / "bad.ipynb"),
                cwd=str(ROOT),
                **PAPERMILL_KERNEL,
                progress_bar=False,
                parameters=dict(run_dir=str(bad), data_root=str(tmp_path / "toy"), **params),
            )
        assert name in str(e.value)
        assert not bad.exists()
