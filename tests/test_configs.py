"""Every real-scale YAML file in configs/ validates against its schema and runs as written: each value it sets
reaches the run (or the pipeline's step) unchanged, resolved offline through the loader the command line uses."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from papermill.translators import PythonTranslator

import cskd.cli  # noqa: F401  (registers every phase)
from cskd.clip_study import ClipStudyConfig
from cskd.config import PHASES, load_config, load_yaml, to_dict
from cskd.notebook_params import NOTEBOOK_PARAMETERS, parameters_cell, sync_parameters
from cskd.pipeline import STEPS, WIRING, PipelineConfig, resolve_steps

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PIPELINE_AVA = ROOT / "configs" / "pipeline_ava.yaml"


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # a pipeline config's paths are relative to the project root, as the CLI runs there


def schema(path: Path):
    "The config class of a config file: a phase's, by the file name's first word, or the CLIP study's."
    if path.stem.startswith("clip_knows"):
        return ClipStudyConfig
    if path.stem.startswith("pipeline"):
        return PipelineConfig
    return PHASES[path.stem.split("_")[0]].config


def same(got, want) -> bool:
    "A config value equals what a YAML file says (a lone string becomes a one-item list where lists are wanted)."
    if isinstance(got, (list, tuple)) and not isinstance(want, (list, tuple)):
        want = [want]
    if isinstance(got, (list, tuple)):
        return list(got) == list(want)
    return got == want and type(got) is not bool or got is want


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    cfg = load_config(schema(path), path)
    assert cfg.run_dir and cfg.run_dir.startswith("runs/")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_value_a_yaml_sets_reaches_the_run(path):
    cfg = load_config(schema(path), path)
    for k, v in load_yaml(path).items():
        assert same(getattr(cfg, k), v), (k, getattr(cfg, k), v)


def test_every_phase_has_a_config():
    assert {p.stem.split("_")[0] for p in CONFIGS} >= {"align", "finetune", "distill", "clip", "pipeline"}


def test_pipeline_ava_steps_are_their_phase_yamls():
    """Each step of the AVA pipeline is its phase YAML run alone, but for the wiring and the pipeline's values of
    fields the YAML leaves unset (no progress bars; the unaligned baseline's starting weights): phase 1 of the
    large encoder at the 1.5e-4 of its YAML, not a notebook's."""
    cfg = load_config(PipelineConfig, PIPELINE_AVA)
    for seed in cfg.seeds:
        steps = resolve_steps(cfg, seed)
        assert list(steps) == list(STEPS)
        for step, got in steps.items():
            phase, field = STEPS[step]
            path = ROOT / getattr(cfg, field)
            alone = to_dict(load_config(PHASES[phase].config, path))
            differ = {k for k in alone if not same(got[k], alone[k])}
            unset = set(alone) - set(load_yaml(path))
            assert differ <= set(WIRING) | unset, (step, {k: (got[k], alone[k]) for k in differ - set(WIRING)})
            assert got["seed"] == seed and got["run_dir"] == f"{cfg.run_dir}/seed{seed}/{step}"
            if phase == "align":
                assert set(alone["exclude_split"]) < set(got["exclude_split"])  # plus data_root's test and val
    assert resolve_steps(cfg)["align_large"]["lr"] == 1.5e-4 == load_yaml(ROOT / cfg.align_large_config)["lr"]


def test_parameters_cells_are_generated_from_the_configs():
    assert set(NOTEBOOK_PARAMETERS) >= {"align", "finetune", "distill", "pipeline"}
    assert sync_parameters(check=True) == [], "run: python -m cskd sync-params"
    for name in NOTEBOOK_PARAMETERS:  # papermill reads every parameter of the cell (--help-notebook, -p checks)
        cell = parameters_cell(name)
        assigned = [line.split(" = ")[0] for line in cell.splitlines() if not line.startswith("#")]
        assert [p.name for p in PythonTranslator.inspect({"source": cell})] == assigned, name


def test_pipeline_dry_run_prints_every_step_and_checks(tmp_path):
    """configs/pipeline_ava.yaml where /data/ava does not exist and nothing downloads: every step with the settings
    its phase YAML gives, the pipeline fields no step uses left out, and a failing pre-flight naming the fixes."""
    r = subprocess.run(
        [sys.executable, "-m", "cskd", "pipeline", "-c", str(PIPELINE_AVA), "--dry-run"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")),
        timeout=300,
    )
    assert r.returncode == 1, r.stderr
    settings, checks = r.stdout.split("# pre-flight checks\n")
    out = yaml.safe_load(settings)
    steps = out["steps"]
    assert list(steps) == [*STEPS, "collapse"] and out["pipeline"]["seeds"] == [0, 1, 2]
    assert "toy_images" not in out["pipeline"] and "finetune_epochs" not in out["pipeline"]
    align = load_yaml(ROOT / "configs" / "align_ava_vitb16_to_vits16.yaml")
    assert {k: steps["align_large"][k] for k in ("lr", "epochs", "batch_size")} == {
        k: align[k] for k in ("lr", "epochs", "batch_size")
    }
    assert (
        steps["teacher"]["init"] == "runs/pipeline_ava/seed0/align_large" and steps["teacher"]["notebook"] == "finetune"
    )
    problems = [line for line in checks.splitlines() if line.startswith("problem")]
    for words in ("cskd splits ava /data/ava", "cskd splits aadb /data/aadb", "--clip-pretrained", "HF_HUB_OFFLINE"):
        assert any(words in line for line in problems), (words, checks)
    assert not Path(ROOT / "runs" / "pipeline_ava").exists()  # nothing written
