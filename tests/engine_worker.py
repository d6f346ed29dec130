"""A small training script for tests/test_engine.py: started as a real subprocess (or by torchrun),
killed, resumed. Trains an MLP on a seeded random regression set with `cskd.engine.fit` and prints
one JSON line with the result on rank 0."""

import argparse, json, os, sys, time

import torch
from torch import nn

from cskd.distributed import is_main_process
from cskd.engine import TrainConfig, fit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reliability"))
from worker import NoisyDataset  # the reliability worker's seeded data


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--samples", type=int, default=640)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=32)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--ckpt-every", type=int, default=0)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--noise", type=float, default=0.0)
    p.add_argument(
        "--step-delay", type=float, default=0.0, help="seconds to sleep per step, so a test can kill mid-run"
    )
    p.add_argument("--resume", default="auto")
    a = p.parse_args(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        torch.set_num_threads(1)  # 2 ranks share the cores

    torch.manual_seed(0)
    layers, d = [], a.dim
    for _ in range(a.layers):
        layers += [nn.Linear(d, a.hidden), nn.GELU(), nn.Dropout(a.dropout)]
        d = a.hidden
    model = nn.Sequential(*layers, nn.Linear(d, 1))

    def step(model, batch):
        if a.step_delay:
            time.sleep(a.step_delay)
        x, y = batch
        return nn.functional.mse_loss(model(x), y)

    resume = {"auto": "auto", "true": True, "false": False}[a.resume.lower()]
    cfg = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        accum_steps=a.accum,
        lr=a.lr,
        optimizer=a.optimizer,
        warmup_steps=3,
        ckpt_every=a.ckpt_every,
        num_workers=a.num_workers,
        run_dir=a.run_dir,
        resume=resume,
        progress=False,
        log_every=5,
        seed=1,
    )
    r = fit(model, NoisyDataset(a.samples, a.dim, a.noise), step, cfg)
    if is_main_process():
        print(
            json.dumps(
                dict(
                    global_step=r.global_step,
                    resumed_from=r.resumed_from,
                    last=str(r.last_checkpoint),
                    world_size=int(os.environ.get("WORLD_SIZE", "1")),
                )
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
