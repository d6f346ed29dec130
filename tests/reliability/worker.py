"""A training script for the reliability suite, started as a real subprocess. It trains a small MLP with
`cskd.engine.fit` (dropout, noisy data, an eval_fn) and injects one fault where its flags say:

  --kill-at-step K       SIGKILL itself inside step_fn when K optimizer steps are done (mid-epoch)
  --kill-in-eval N       SIGKILL itself inside the N-th call of eval_fn
  --kill-on EV:TEXT:N    SIGKILL itself at the N-th audit event EV (os.mkdir, open, os.rename, shutil.rmtree)
                         whose arguments contain TEXT: a deterministic point inside a checkpoint write
  --bad-loss-at-step K   multiply the loss by --bad-loss (nan or inf) at optimizer step K (1-based)
  --pause-at-step K --pause-while FILE   wait inside step_fn at step K for as long as FILE exists (and
                         create FILE.reached when the wait starts)
  --fsize-limit B        from step --fsize-at-step on, no file may grow past B bytes (RLIMIT_FSIZE, SIGXFSZ
                         ignored): a real write failure, as a full disk or a quota gives

On success it prints one JSON line with the result. The faults are plain code in this script; the library
is not patched."""

import argparse, json, os, resource, signal, sys, time

import torch
from torch import nn

from cskd.engine import TrainConfig, TrainingInterrupted, fit


class NoisyDataset(torch.utils.data.Dataset):
    "Seeded random regression data plus noise drawn per item from torch's global RNG (an 'augmentation')."

    def __init__(self, n, d, noise, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, d, generator=g)
        self.y = self.x @ torch.randn(d, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)
        self.noise = noise

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return (x + self.noise * torch.randn_like(x) if self.noise else x), self.y[i]


def die():
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--samples", type=int, default=320)
    p.add_argument("--dim", type=int, default=8)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--ckpt-every", type=int, default=4)
    p.add_argument("--step-delay", type=float, default=0.0)
    p.add_argument("--kill-at-step", type=int)
    p.add_argument("--kill-in-eval", type=int)
    p.add_argument("--kill-on")
    p.add_argument("--bad-loss-at-step", type=int)
    p.add_argument("--bad-loss", type=float, default=float("nan"))
    p.add_argument("--pause-at-step", type=int)
    p.add_argument("--pause-while")
    p.add_argument("--fsize-limit", type=int)
    p.add_argument("--fsize-at-step", type=int, default=0)
    a = p.parse_args(argv)

    if a.kill_on:
        event, text, nth = a.kill_on.split(":")
        nth, seen = int(nth), [0]

        def hook(ev, args):
            if ev == event and any(text in str(x) for x in args):
                seen[0] += 1
                if seen[0] == nth:
                    die()

        sys.addaudithook(hook)
    if a.fsize_limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(a.dim, a.hidden), nn.GELU(), nn.Dropout(0.2), nn.Linear(a.hidden, 1))
    held_out = NoisyDataset(64, a.dim, 0.0, seed=1)

    def step(model, batch, info):
        if a.step_delay:
            time.sleep(a.step_delay)
        if a.kill_at_step is not None and info.step == a.kill_at_step:
            die()
        if a.pause_at_step is not None and info.step == a.pause_at_step:
            open(a.pause_while + ".reached", "w").close()
            while os.path.exists(a.pause_while):
                time.sleep(0.02)
        if a.fsize_limit is not None and info.step == a.fsize_at_step:
            resource.setrlimit(resource.RLIMIT_FSIZE, (a.fsize_limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        x, y = batch
        loss = nn.functional.mse_loss(model(x), y)
        if a.bad_loss_at_step is not None and info.step + 1 == a.bad_loss_at_step:
            loss = loss * a.bad_loss
        return loss

    calls = [0]

    def evaluate(model):
        calls[0] += 1
        if a.kill_in_eval == calls[0]:
            die()
        torch.randn(3)  # eval draws random numbers too: the engine must keep them off the training streams
        return dict(mse=nn.functional.mse_loss(model(held_out.x), held_out.y))

    cfg = TrainConfig(
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=1e-2,
        warmup_steps=3,
        ckpt_every=a.ckpt_every,
        run_dir=a.run_dir,
        progress=False,
        log_every=2,
        seed=1,
        best_metric="mse",
        best_mode="min",
    )
    try:
        r = fit(model, NoisyDataset(a.samples, a.dim, 0.1), step, cfg, eval_fn=evaluate)
    except TrainingInterrupted as e:  # SIGINT / SIGTERM: `last` is saved; exit as the command line does
        sys.exit(e.exit_code)
    print(
        json.dumps(
            dict(global_step=r.global_step, resumed_from=r.resumed_from, last=str(r.last_checkpoint), pid=os.getpid())
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
