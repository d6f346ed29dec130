"Every real-scale YAML file in configs/ validates against its schema (no training)."

from pathlib import Path

import pytest

import cskd.cli  # noqa: F401  (registers every phase)
from cskd.clip_study import ClipStudyConfig
from cskd.config import PHASES, load_config
from cskd.pipeline import PipelineConfig

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def schema(path: Path):
    "(config class, defaults) of a config file: a phase's, by the file name's first word, or the CLIP study's."
    if path.stem.startswith("clip_knows"):
        return ClipStudyConfig, {}
    if path.stem.startswith("pipeline"):
        return PipelineConfig, {}
    ph = PHASES[path.stem.split("_")[0]]
    return ph.config, ph.defaults


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_validates(path):
    cls, defaults = schema(path)
    cfg = load_config(cls, path, defaults=defaults)
    assert cfg.run_dir and cfg.run_dir.startswith("runs/")


def test_every_phase_has_a_config():
    assert {p.stem.split("_")[0] for p in CONFIGS} >= {"align", "finetune", "distill", "clip", "pipeline"}
