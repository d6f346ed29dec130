"""Wall time of the CSKD pipeline (`nbs/experiments/pipeline.ipynb`) with its steps one after another against
`--workers` steps at once, on the same toy world in the same run of this script.

A toy world of `--images` images (written to a temporary folder), the shipped toy models, seeds `--seeds`,
small budgets (one epoch per phase, `--labels` labeled images, a pool of `--pool` images; no collapse study) so
that the run takes minutes: the steps' kernel start-up and imports weigh more here than in `make demo`. Each
configuration runs in a fresh run folder; "1 worker" uses every torch thread for one step, "N workers" runs N
steps at once with threads // N threads each (`PipelineConfig.workers`).

The last line, `ratio: <r>`, is one-worker seconds / N-worker seconds (above 1: running steps at once is faster).
"""

import argparse, json, tempfile, time
from pathlib import Path


def run_pipeline(world: Path, run_dir: Path, workers: int, seeds: list, labels: int, pool: int) -> float:
    from cskd.pipeline import run_step

    params = dict(
        data_root=str(world),
        figures_dir=str(run_dir / "figures"),
        seeds=seeds,
        n_labeled=labels,
        pool_limit=pool,
        align_epochs=1,
        align_large_epochs=1,
        finetune_epochs=1,
        distill_epochs=1,
        latency_repeats=2,
        collapse=False,
        workers=workers,
    )
    t0 = time.perf_counter()
    run_step("pipeline", run_dir, params, log=lambda *a: None)
    return time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=2, help="seeds 0 .. n-1")
    ap.add_argument("--images", type=int, default=3000)
    ap.add_argument("--labels", type=int, default=500)
    ap.add_argument("--pool", type=int, default=600)
    args = ap.parse_args(argv)
    from cskd.pipeline import STEPS
    from cskd.toy import make_toy_world

    tmp = Path(tempfile.mkdtemp(prefix="cskd-bench-workers-"))
    world = make_toy_world(tmp / "toy", args.images)
    seeds = list(range(args.seeds))
    rows = []
    for w in (1, args.workers):
        s = run_pipeline(world, tmp / f"workers{w}", w, seeds, args.labels, args.pool)
        table = json.loads((tmp / f"workers{w}" / "metrics.json").read_text())
        rows.append((w, s, table["cskd_student/srcc"]))
    print(f"pipeline: {len(seeds)} seeds x {len(STEPS)} steps, toy world of {args.images} images, one epoch per phase")
    print(f"{'workers':>8} {'seconds':>9} {'CSKD student SRCC':>18}")
    for w, s, q in rows:
        print(f"{w:>8} {s:>9.1f} {q:>18.4f}")
    print(f"ratio: {rows[0][1] / rows[1][1]:.3f}")


if __name__ == "__main__":
    main()
