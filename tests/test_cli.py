"The command line as a newcomer runs it: real subprocesses, real files."

import json
import subprocess
import sys


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cskd", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_demo_writes_world_and_figure(tmp_path):
    r = run(
        "demo",
        "--root",
        str(tmp_path / "toy"),
        "--n-images",
        "120",
        "--figures",
        str(tmp_path / "fig"),
        "--no-pipeline",
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "fig" / "toy_samples.png").stat().st_size > 10_000
    assert (tmp_path / "fig" / "toy_samples.pdf").exists()
    ref = json.loads((tmp_path / "toy" / "world.json").read_text())["reference"]
    assert f"{ref['ceiling_srcc']:.3f}" in r.stdout


def test_toy_command_is_deterministic_across_processes(tmp_path):
    for name in "ab":
        assert run("toy", str(tmp_path / name), "--n-images", "50", "--seed", "7").returncode == 0
    for rel in ["AVA.txt", "captions.tsv", "metadata.csv", "images/17.jpg", "splits/test.txt"]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_toy_command_reports_bad_parameters(tmp_path):
    r = run("toy", str(tmp_path / "w"), "--n-images", "3")
    assert r.returncode == 2 and "n_images=3" in r.stderr


def test_every_flag_of_every_command_has_help():
    "`--help` explains every flag of every command (the phases' flags come from their fields' declarations)."
    import argparse

    from cskd.cli import _parser

    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [
        f"{name} {a.dest}"
        for name, q in sub.choices.items()
        for a in q._actions
        if not isinstance(a, argparse._HelpAction) and not (a.help and a.help.strip())
    ]
    assert not bare, f"flags without help: {bare}"
    assert {"align", "finetune", "distill", "score", "export", "splits", "evaluate"} <= set(sub.choices)
