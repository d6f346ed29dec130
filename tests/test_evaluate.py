"""The rehearsal of the real layouts: each dataset laid out as its distribution ships it (`dataset_layouts`),
`cskd splits` as a user runs it (a subprocess), a one-epoch fine-tune of a tiny model on each official split,
then `cskd evaluate` of every run on its own test split and across datasets (scores rescaled onto the target's
range). The same path a user with the data takes, at toy size."""

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cskd.cli import main
from cskd.data import SCALES, rescale
from cskd.runs import file_sha1
from cskd.trained import evaluate_run, iaa_model_from_run
from dataset_layouts import LAYOUTS

ROOT = Path(__file__).resolve().parents[1]
HEAD = {"ava": ("dist", "emd"), "para": ("dist", "emd"), "aadb": ("scalar", "mse"), "tad66k": ("scalar", "mse")}


def cskd(*args) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "cskd", *map(str, args)], capture_output=True, text=True, env=env)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    "Every dataset laid out and split by `cskd splits` (a subprocess each)."
    base = tmp_path_factory.mktemp("datasets")
    out = {}
    for name, layout in LAYOUTS.items():
        facts = layout(base / name)
        r = cskd("splits", name, base / name, "--val-fraction", "0.25")
        assert r.returncode == 0, r.stderr
        assert f"{name} under {base / name}" in r.stdout and "report: " in r.stdout
        out[name] = dict(
            root=base / name, facts=facts, report=json.loads((base / name / "splits" / "report.json").read_text())
        )
    return out


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    "A one-epoch fine-tune of a tiny ViT on each dataset's official split, configured from the split report."
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for name, d in data.items():
        cfg = d["report"]["config"]
        head, loss = HEAD[name]
        args = ["finetune", "--run-dir", base / name, "--encoder", "vit_tiny_patch16_224", "--image-size", "32"]
        args += ["--epochs", "1", "--batch-size", "8", "--eval-batch-size", "16", "--progress", "false"]
        args += ["--head", head, "--loss", loss, "--device", "cpu"]
        for k in ("data_root", "labels", "label_format", "images", "train_split", "val_split", "test_split"):
            args += [f"--{k.replace('_', '-')}", cfg[k]]
        with contextlib.redirect_stdout(io.StringIO()):
            assert main([str(a) for a in args]) == 0
        out[name] = base / name
    return out


def test_the_report_names_what_was_left_out(data):
    for name, d in data.items():
        rep, facts = d["report"], d["facts"]
        left_out = rep["lists"]["test"]["missing"] + rep["lists"]["train"]["missing"]
        assert set(left_out) == facts["missing"], name
        assert rep["lists"]["test"]["kept"] == len([i for i in facts["test"] if i not in facts["missing"]]), name
    assert list(data["ava"]["report"]["lists"]["train"]["unreadable"]) == list(data["ava"]["facts"]["unreadable"])


def test_each_run_trained_on_its_dataset_scale(data, runs):
    for name, run in runs.items():
        res = json.loads((run / "results.json").read_text())
        for k in ("srcc", "plcc", "krcc", "acc"):
            assert np.isfinite(res[f"test_{k}"]), (name, k)
        assert ("test_emd2" in res) == (HEAD[name][0] == "dist"), name
        rec = json.loads((run / "splits.json").read_text())  # which split files the run read, by sha1
        for s in ("train", "val", "test"):
            assert rec[f"{s}_split"]["sha1"] == data[name]["report"]["files"][f"splits/{s}.txt"]["sha1"], (name, s)
        lo, hi = SCALES[name].score_range
        pred = pd.read_csv(run / "predictions_test.csv")
        assert pred.true_mean.between(lo, hi).all(), name
        model, cfg = iaa_model_from_run(run)
        assert cfg.label_format == name
        if name in ("ava", "para"):
            assert model.head.bins == len(SCALES[name].bins)  # PARA: 9 bins, AVA: 10
            assert [c for c in pred.columns if c[0] == "p" and c[1:].isdigit()] == [
                f"p{k}" for k in range(1, model.head.bins + 1)
            ]
            assert pred.pred_mean.between(lo, hi).all(), name  # the expectation over the dataset's bin values


def test_evaluate_on_its_own_test_split_gives_the_runs_numbers(data, runs):
    for name, run in runs.items():
        ev = evaluate_run(run, data[name]["root"], "test", out=run / "ev_own")
        res = json.loads((run / "results.json").read_text())
        assert ev["dataset"] == name and ev["rescaled"]["source"] == ev["rescaled"]["target"]
        for k in ("srcc", "plcc", "krcc", "acc"):
            assert ev[k] == pytest.approx(res[f"test_{k}"], abs=1e-6), (name, k)
        assert ev["split_sha1"] == file_sha1(data[name]["root"] / "splits" / "test.txt")


def test_cross_dataset_transfer_in_one_command(data, runs):
    r = cskd(
        "evaluate", "--run", runs["ava"], "--data-root", data["aadb"]["root"], "--split", "test", "--device", "cpu"
    )
    assert r.returncode == 0, r.stderr
    assert "(trained on ava) on aadb test: 8 images" in r.stdout
    assert "| srcc | plcc | krcc | acc |" in r.stdout and "rescaled onto 0..1; accuracy threshold 0.5" in r.stdout
    ev = json.loads((runs["ava"] / "evaluations" / "aadb-test" / "metrics.json").read_text())
    assert ev["n"] == 8 and ev["rescaled"] == dict(source=[1.0, 10.0], target=[0.0, 1.0]) and "emd2" not in ev
    pred = pd.read_csv(runs["ava"] / "evaluations" / "aadb-test" / "predictions.csv")
    np.testing.assert_allclose(pred.pred_mean, (pred.pred_raw - 1) / 9)
    assert pred.true_mean.between(0, 1).all()
    for src, dst in (("ava", "para"), ("ava", "tad66k"), ("para", "ava"), ("aadb", "para"), ("tad66k", "ava")):
        ev = evaluate_run(runs[src], data[dst]["root"], "test", out=runs[src] / f"to_{dst}")
        assert ev["trained_on"] == src and ev["dataset"] == dst and ev["threshold"] == SCALES[dst].threshold
        assert ev["n"] == data[dst]["report"]["lists"]["test"]["kept"]
        pred = pd.read_csv(runs[src] / f"to_{dst}" / "predictions.csv")
        np.testing.assert_allclose(pred.pred_mean, rescale(pred.pred_raw.to_numpy(), SCALES[src], SCALES[dst]))
        assert ("emd2" in ev) == (src == dst)  # EMD only between the same bins
        assert all(np.isfinite(ev[k]) for k in ("srcc", "plcc", "krcc", "acc")), (src, dst)


def test_evaluate_errors_name_what_is_wrong(data, runs, tmp_path):
    r = cskd("evaluate", "--run", runs["ava"], "--data-root", data["para"]["root"], "--dataset", "tad66k")
    assert r.returncode == 2 and "is the split of 'para'" in r.stderr
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert main(["evaluate", "--run", str(runs["ava"]), "--data-root", str(tmp_path)]) == 2
    assert "no splits/report.json" in err.getvalue() and "cskd splits" in err.getvalue()
    ids = tmp_path / "ids.txt"
    ids.write_text("no_such_image\n")
    with contextlib.redirect_stderr(io.StringIO()) as err:
        assert (
            main(["evaluate", "--run", str(runs["ava"]), "--data-root", str(data["ava"]["root"]), "--split", str(ids)])
            == 2
        )
    assert f"{ids}: 1 ids have no label" in err.getvalue()
