"`cskd results`: real fine-tuning runs of a small sweep (lr x seed) collected into one table by the command line."

import csv
import json
import shutil

import pytest
from cskd_cli import cskd

ARGS = ["--encoder", "resnet10t", "--epochs", "1", "--image-size", "32", "--batch-size", "16"]
ARGS += ["--eval-batch-size", "32", "--progress", "false"]
SWEEP = {"sweep-a": ("0.001", "0"), "sweep-b": ("0.001", "1"), "sweep-c": ("0.01", "0")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    "Three finished fine-tuning runs on a toy world, and an interrupted one (no final metrics yet)."
    root = tmp_path_factory.mktemp("sweep")
    assert cskd("toy", "toy", "--n-images", "60", cwd=root).returncode == 0
    for name, (lr, seed) in SWEEP.items():
        r = cskd(
            "finetune", "--data-root", "toy", *ARGS, "--lr", lr, "--seed", seed, "--run-dir", f"runs/{name}", cwd=root
        )
        assert r.returncode == 0, r.stderr
    shutil.copytree(root / "runs" / "sweep-a", root / "runs" / "sweep-d")
    for final in ("results.json", "metrics.json"):  # what a run stopped before its final evaluation leaves
        (root / "runs" / "sweep-d" / final).unlink()
    return root


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_a_row_per_run_with_only_the_parameters_that_differ(runs):
    r = cskd("results", "runs/sweep-*", "--out", "tables/by_seed", cwd=runs)
    assert r.returncode == 0, r.stderr
    rows = read_csv(runs / "tables" / "by_seed.csv")
    final = json.loads((runs / "runs" / "sweep-a" / "results.json").read_text())
    assert list(rows[0]) == ["run", "phase", "lr", "seed", *final]  # encoder, epochs, ...: the same in every run
    assert [(row["run"], row["phase"], row["lr"], row["seed"]) for row in rows] == [
        (f"runs/{name}", "finetune", lr, seed) for name, (lr, seed) in SWEEP.items()
    ]
    assert float(rows[0]["test_srcc"]) == pytest.approx(final["test_srcc"])
    assert "3 finished runs; 1 skipped\n  skipped runs/sweep-d: no metrics.json or results.json: unfinished" in r.stdout
    md = (runs / "tables" / "by_seed.md").read_text()
    assert md.startswith("| run | phase | lr | seed | val_srcc |") and "| runs/sweep-c | finetune | 0.01 | 0 |" in md


def test_over_seeds_gives_mean_and_sd_per_setting(runs):
    r = cskd("results", "runs/sweep-a", "runs/sweep-b", "runs/sweep-c", "--over-seeds", "--out", "over", cwd=runs)
    assert r.returncode == 0, r.stderr
    rows = read_csv(runs / "over.csv")
    assert list(rows[0])[:3] == ["phase", "lr", "n_seeds"] and "seed" not in rows[0]
    assert [(row["lr"], row["n_seeds"], row["runs"]) for row in rows] == [
        ("0.001", "2", "runs/sweep-a runs/sweep-b"),
        ("0.01", "1", "runs/sweep-c"),
    ]
    srcc = [json.loads((runs / "runs" / n / "results.json").read_text())["test_srcc"] for n in ("sweep-a", "sweep-b")]
    mean, sd = sum(srcc) / 2, abs(srcc[0] - srcc[1]) / 2**0.5
    assert float(rows[0]["test_srcc"]) == pytest.approx(mean) and float(rows[0]["test_srcc_sd"]) == pytest.approx(sd)
    assert rows[1]["test_srcc_sd"] == ""  # one run: no spread
    assert "| phase | lr | n_seeds | val_srcc |" in r.stdout and f"| {mean:.3f} ± {sd:.3f} |" in r.stdout
    assert f"| {mean:.3f} ± {sd:.3f} |" in (runs / "over.md").read_text()  # the CSV keeps the numbers
    assert "0 skipped" in r.stdout


def test_bad_inputs_name_the_path(runs):
    r = cskd("results", "runs/sweep-a", "runs/swep-*", cwd=runs)
    assert r.returncode == 2 and "run folder 'runs/swep-*': matches nothing" in r.stderr, r.stderr
    r = cskd("results", "runs/sweep-d", "toy", cwd=runs)
    assert r.returncode == 2 and "no finished run among runs/sweep-d (no metrics.json" in r.stderr, r.stderr
    assert "toy (no config.json: not a run folder)" in r.stderr
    assert not (runs / "results.csv").exists()  # nothing written when there is no table
