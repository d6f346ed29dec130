"""Fine-tuning seconds of the demo's student with the per-process decoded-image cache off against on
(`cskd.images.DECODED`; `CSKD_DECODE_CACHE_MB=0` turns it off).

Each run is a fresh process, as a pipeline step is: `cskd.iaa.finetune` of `cskd_toy_cnn` from its shipped toy
weights on `--n-train` labeled images of a toy world of `--images` images (written to a temporary folder), with
the demo's recipe (3 epochs, batch 64, `precision="native"`, channels-last, one torch thread), validation after
every epoch and the test split at the end. The two settings alternate within each repetition; the table gives
the median seconds of the `finetune` call, the reads served from the cache, and the test SRCC (the same with
the cache on or off: the pixels are the decoder's).

The last line, `ratio: <r>`, is seconds with the cache off / seconds with it on (above 1: the cache saves time).
"""

import argparse, json, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = """
import json, sys, time, torch
torch.set_num_threads(1)
from cskd.iaa import finetune, finetune_config
from cskd.images import DECODED
root, run_dir, n_train, epochs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
cfg = finetune_config(data_root=root, encoder="cskd_toy_cnn", pretrained="toy", n_train=n_train, epochs=epochs,
                      precision="native", channels_last=True, progress=False, run_dir=run_dir, resume=False)
t = time.perf_counter()
res = finetune(cfg)
print(json.dumps(dict(seconds=time.perf_counter() - t, hits=DECODED.hits, srcc=res["test_srcc"])))
"""

SETTINGS = {"cache off": "0", "cache on": None}


def run_once(root: Path, run_dir: Path, n_train: int, epochs: int, budget: str | None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env.pop("CSKD_DECODE_CACHE_MB", None)
    if budget is not None:
        env["CSKD_DECODE_CACHE_MB"] = budget
    args = [sys.executable, "-c", CHILD, str(root), str(run_dir), str(n_train), str(epochs)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--n-train", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    from cskd.toy import make_toy_world

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        root = make_toy_world(Path(tmp) / "toy", args.images, seed=0)
        print(f"toy world of {args.images} images in {time.perf_counter() - t:.1f} s; {args.reps} repetitions")
        runs = {s: [] for s in SETTINGS}
        for r in range(args.reps):
            for s, budget in SETTINGS.items():
                runs[s].append(run_once(root, Path(tmp) / f"run{r}-{s[-2:]}", args.n_train, args.epochs, budget))
    print(f"{'setting':<12}{'seconds':>10}{'min':>9}{'max':>9}{'cache hits':>12}{'test SRCC':>11}")
    med = {}
    for s, rs in runs.items():
        secs = [x["seconds"] for x in rs]
        med[s] = statistics.median(secs)
        print(f"{s:<12}{med[s]:>10.2f}{min(secs):>9.2f}{max(secs):>9.2f}{rs[0]['hits']:>12}{rs[0]['srcc']:>11.4f}")
    print(f"ratio: {med['cache off'] / med['cache on']:.3f}")


if __name__ == "__main__":
    main()
