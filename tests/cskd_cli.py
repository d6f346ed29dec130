"""`python -m cskd ...` as a real subprocess: the command line as a user runs it, for the tests that drive it."""

import subprocess
import sys


def cskd(*args, cwd=None, env=None, timeout: int = 600) -> subprocess.CompletedProcess:
    "Run `python -m cskd ARGS` (each argument as text) under this interpreter, its output captured as text."
    cmd = [sys.executable, "-m", "cskd", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)
