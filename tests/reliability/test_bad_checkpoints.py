"""Checkpoint files that are not what they claim: one from another architecture, a malicious pickle posing
as a checkpoint's state.pt (nothing executes), a garbage `.safetensors`. Each is a clear error naming the file."""

import os

import pytest
import torch
from torch import nn

from cskd.checkpoint import CheckpointError, load_checkpoint, load_weights, save_checkpoint
from relutil import WORKER, last_error_line, run, worker


class Evil:
    "Unpickling this runs a shell command that creates a marker file."

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def mlp(hidden=64, extra=False):
    layers = [nn.Linear(8, hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(hidden, 1)]
    return nn.Sequential(*layers, *([nn.Linear(1, 1)] if extra else []))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    "A finished worker run (a real checkpoint of an MLP with 64 hidden units)."
    run_dir = tmp_path_factory.mktemp("arch") / "run"
    worker(["--run-dir", run_dir, "--epochs", 1])
    return run_dir


def test_checkpoint_of_another_architecture(trained, tmp_path):
    f = trained / "checkpoints" / "last" / "model.safetensors"
    with pytest.raises(ValueError) as e:
        load_weights(mlp(extra=True), trained / "checkpoints" / "last")
    assert (
        str(e.value) == f"{f}: weights do not fit Sequential; missing keys: ['4.bias', '4.weight']; unexpected keys: []"
    )
    with pytest.raises(
        ValueError,
        match=r"shape mismatch: 0\.bias: file \(64,\) vs model \(32,\); 0\.weight: file \(64, 8\) vs model \(32, 8\)",
    ) as e:
        load_weights(mlp(hidden=32), f)
    assert str(e.value).startswith(f"{f}: weights do not fit Sequential")
    # resuming the run folder with another model: the run stops before training, naming the file
    r = run(WORKER, ["--run-dir", trained, "--epochs", 1, "--hidden", 32], check=False)
    assert r.returncode == 1 and last_error_line(r.stderr).startswith(
        f"ValueError: {f}: weights do not fit Sequential; shape mismatch"
    )


def test_encoder_weights_of_another_architecture(tmp_path):
    "Phase 2's `init` from a phase-1 run of another encoder (resnet10t into a ViT)."
    from cskd.iaa import build_iaa_model, finetune_config

    cnn = build_iaa_model(finetune_config(encoder="resnet10t", image_size=32))
    save_checkpoint(tmp_path / "cnn" / "checkpoints" / "last", cnn)
    f = tmp_path / "cnn" / "checkpoints" / "last" / "model.safetensors"
    with pytest.raises(ValueError) as e:
        build_iaa_model(finetune_config(encoder="vit_tiny_patch16_224", image_size=32, init=str(tmp_path / "cnn")))
    msg = str(e.value)
    assert msg.startswith(f"{f}: weights under 'encoder.' do not fit Encoder (vit_tiny_patch16_224)"), msg
    assert "missing keys: ['" in msg and "unexpected keys: ['" in msg, msg


def test_malicious_pickle_runs_nothing(trained, tmp_path):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    marker, state = tmp_path / "PWNED", run_dir / "checkpoints" / "last" / "state.pt"
    torch.save(dict(global_step=1, epoch=0, payload=Evil(marker)), state)  # a real pickle with a GLOBAL posix.system
    assert b"system" in state.read_bytes()
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(run_dir / "checkpoints" / "last", mlp())
    assert str(e.value).startswith(
        f"{state}: not a loadable checkpoint state (Trying to load unsupported GLOBAL posix.system"
    )
    assert "weights_only=False" not in str(e.value)  # we never suggest the unsafe way out
    # a real process resuming from it: it stops with the same error, and the command never ran
    r = run(WORKER, ["--run-dir", run_dir, "--epochs", 2], check=False)
    assert r.returncode == 1
    assert last_error_line(r.stderr).startswith(
        f"cskd.checkpoint.CheckpointError: {state}: not a loadable checkpoint state"
    ), r.stderr[-2000:]
    assert not marker.exists()


@pytest.mark.parametrize(
    "content,why",
    [
        (b"", "header too small"),
        (os.urandom(4096), "header too large"),
        (b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all", "invalid JSON in header"),
    ],
)
def test_garbage_safetensors(tmp_path, content, why):
    f = tmp_path / "model.safetensors"
    f.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_weights(mlp(), f)
    assert str(e.value).startswith(f"{f}: not a valid safetensors file (Error while deserializing header: {why}"), str(
        e.value
    )
