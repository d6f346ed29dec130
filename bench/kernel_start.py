"""Seconds per executed notebook with a fresh kernel (a new interpreter, as papermill alone starts it) against a
kernel forked from a warm process (`cskd.pipeline.ForkedProvisioner`, what the pipeline's steps use).

The notebook is a step's start and nothing else: it imports what the experiment notebooks' first cells import
(`cskd.iaa`, `cskd.align`, `cskd.distill`) and runs one small torch op, executed by papermill with one torch
thread per kernel. Each setting runs `--n` notebooks one after another per repetition, the settings alternate
within each of `--reps` repetitions, and the table gives the median seconds per notebook. The forked setting's
first repetition includes the forkserver's own start (it imports the same modules once); the table gives it.

The last line, `ratio: <r>`, is fresh seconds / forked seconds per notebook (above 1: forking saves time).
"""

import argparse, os, statistics, tempfile, time
from pathlib import Path

import nbformat

CELL = "import cskd.iaa, cskd.align, cskd.distill\nimport torch\nx = torch.ones(8, 8) @ torch.ones(8, 8)\n"


def run_notebooks(nb: Path, out: Path, n: int, kernels: str) -> list:
    import papermill as pm
    from cskd.pipeline import KERNELS

    times = []
    for i in range(n):
        t = time.perf_counter()
        pm.execute_notebook(str(nb), str(out / f"{kernels}-{i}.ipynb"), progress_bar=False, **KERNELS[kernels])
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    from cskd.pipeline import kernel_threads

    with tempfile.TemporaryDirectory() as tmp, kernel_threads(1):
        nb = Path(tmp) / "start.ipynb"
        book = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(CELL)])
        book.metadata["kernelspec"] = dict(name="cskd", display_name="cskd", language="python")
        nbformat.write(book, nb)
        t = time.perf_counter()
        first = run_notebooks(nb, Path(tmp), 1, "forked")[0]  # starts the forkserver
        runs = {"fresh": [], "forked": []}
        for _ in range(args.reps):
            for k in runs:
                runs[k] += run_notebooks(nb, Path(tmp), args.n, k)
        total = time.perf_counter() - t
    med = {k: statistics.median(v) for k, v in runs.items()}
    print(f"{args.reps} x {args.n} notebooks per setting, one torch thread, {os.cpu_count()} cores, {total:.0f} s")
    print(f"first forked notebook (with the forkserver's start): {first:.2f} s")
    print(f"{'kernels':<10}{'s/notebook':>12}{'min':>8}{'max':>8}")
    for k, v in runs.items():
        print(f"{k:<10}{med[k]:>12.2f}{min(v):>8.2f}{max(v):>8.2f}")
    print(f"ratio: {med['fresh'] / med['forked']:.3f}")


if __name__ == "__main__":
    main()
