import pytest

from relutil import worker


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    "An uninterrupted run of the worker with its default settings (once per test process)."
    run = tmp_path_factory.mktemp("ref") / "run"
    r = worker(["--run-dir", run])
    assert r["global_step"] == 30 and r["resumed_from"] is None
    return run
