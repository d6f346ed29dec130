"""Shared helpers of the reliability suite: start the fault-injecting worker (or `python -m cskd`) as a real
subprocess, kill process trees, compare checkpoints."""

import json, os, signal, subprocess, sys, time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).resolve().parent / "worker.py"
ENV = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore::UserWarning:open_clip")


def run(script, args, timeout=300, cwd=ROOT, check=True):
    "Run `script` (a path, or `-m cskd`) with `args` to the end; returns the CompletedProcess."
    cmd = [sys.executable, *(["-m", "cskd"] if script == "cskd" else [str(script)]), *map(str, args)]
    p = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def worker(args, **kw):
    "Run the worker to the end; the JSON line it printed."
    p = run(WORKER, args, **kw)
    return json.loads(p.stdout.strip().splitlines()[-1])


def start(script, args):
    "Start in its own process group, so that a kill reaches the data workers too."
    return subprocess.Popen(
        [sys.executable, str(script), *map(str, args)],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def descendants(pid):
    "Pids of the processes started (directly or not) by `pid`, read from /proc."
    children = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                children.setdefault(int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def kill(p):
    "SIGKILL the process and everything it started, at the same moment (as a crash of the machine would)."
    pids = descendants(p.pid)
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    p.wait(timeout=30)


def wait_for(path, p, timeout=120):
    t = time.time()
    while not Path(path).exists():
        assert p.poll() is None, f"process exited early: {p.communicate()[1][-3000:]}"
        assert time.time() - t < timeout, f"{path} never appeared"
        time.sleep(0.01)


def weights(run_dir, which="last"):
    return load_file(str(Path(run_dir) / "checkpoints" / which / "model.safetensors"))


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for k in a:
        if atol == 0:
            assert torch.equal(a[k], b[k]), (k, (a[k] - b[k]).abs().max())
        else:
            torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def last_error_line(stderr: str) -> str:
    "The exception line of a traceback (what the user reads first)."
    lines = [l for l in stderr.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""
