"""JupyterLab in a real browser: a JupyterLab server on a free loopback port, headless Chromium driven over
the DevTools protocol (websocket-client), `nbs/03_toy.ipynb` opened and its first cells run through the
UI's own commands, the kernel and a cell's output read from the page. Nothing is mocked."""

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "nbs/03_toy.ipynb"


def _first_caption_cell(path: Path) -> int:
    "Index of the chapter's first code cell that prints captions of a tiny world (the cells up to it take seconds)."
    cells = json.loads(path.read_text())["cells"]
    return next(
        i
        for i, c in enumerate(cells)
        if c["cell_type"] == "code" and "print(" in "".join(c["source"]) and "captions.tsv" in "".join(c["source"])
    )


LAST_CELL = _first_caption_cell(ROOT / NOTEBOOK)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def _browser() -> str:
    found = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    if found is None:
        if os.environ.get("CSKD_REQUIRE_BROWSER"):
            pytest.fail("no Chromium found (CSKD_REQUIRE_BROWSER is set): apt-get install -y chromium")
        pytest.skip("no Chromium on this machine (apt-get install -y chromium; .ci/run installs it)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    "Terminate a process we started; kill it if it does not exit within 20 s."
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(what: str, check, timeout: float, proc=None):
    "Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {proc.returncode}")
        try:
            got = check()
        except OSError:
            got = None
        if got:
            return got
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def _get(url: str):
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on the project, loopback only, with a token, autosave off; stopped afterwards."
    from jupyter_client.kernelspec import KernelSpecManager

    if "cskd" not in KernelSpecManager().find_kernel_specs():
        pytest.fail("the cskd kernel is not registered: run `make install` (it registers it in .venv)")
    port, token = _free_port(), secrets.token_hex(16)
    settings = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    settings.mkdir(parents=True)
    (settings / "plugin.jupyterlab-settings").write_text(json.dumps({"autosave": False}))  # never write a notebook
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "rt"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}"]
    cmd += ["--port-retries=0", f"--ServerApp.token={token}", f"--ServerApp.root_dir={ROOT}"]
    cmd += ["--LabApp.expose_app_in_browser=True", f"--LabApp.user_settings_dir={tmp_path / 'settings'}"]
    cmd += [
        f"--LabApp.workspaces_dir={tmp_path / 'ws'}",
        "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
    ]
    cmd += [f"--FileCheckpoints.checkpoint_dir={tmp_path / 'checkpoints'}"]  # not nbs/.ipynb_checkpoints
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait("JupyterLab starts", lambda: _get(f"{base}/api/status?token={token}"), 60, proc)
        yield base, token
    finally:
        _stop(proc)
        log.close()


class Page:
    "One Chromium tab over the DevTools protocol: navigate, reload, evaluate JavaScript."

    def __init__(self, ws_url: str):
        import websocket

        self.ws, self.n = websocket.create_connection(ws_url, timeout=30, suppress_origin=True), 0

    def call(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps(dict(id=self.n, method=method, params=params)))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr: str):
        expr = "(() => {" + PANEL % json.dumps(NOTEBOOK) + "return " + expr + ";})()"
        r = self.call("Runtime.evaluate", expression=expr, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in r:
            raise AssertionError(f"JavaScript failed: {r['exceptionDetails'].get('exception', r['exceptionDetails'])}")
        return r["result"].get("value")


@pytest.fixture
def page(tmp_path):
    "Headless Chromium with a fresh profile and a DevTools port on loopback; closed afterwards."
    profile = tmp_path / "profile"
    cmd = [_browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
    cmd += ["--no-first-run", "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]
    cmd += [f"--user-data-dir={profile}", "--window-size=1280,900", "about:blank"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "chromium.log", "w"))
    try:
        port_file = profile / "DevToolsActivePort"
        _wait(
            "Chromium opens its DevTools port", lambda: port_file.exists() and port_file.read_text().strip(), 60, proc
        )
        port = int(port_file.read_text().split()[0])
        tabs = _wait(
            "a Chromium tab", lambda: [t for t in _get(f"http://127.0.0.1:{port}/json") if t["type"] == "page"], 30
        )
        p = Page(tabs[0]["webSocketDebuggerUrl"])
        p.call("Runtime.enable")
        p.call("Emulation.setFocusEmulationEnabled", enabled=True)  # a headless tab never has the focus otherwise
        yield p
        p.ws.close()
    finally:
        _stop(proc)


PANEL = """const app = window.jupyterapp;
const panel = app ? [...app.shell.widgets("main")].find(w => w.context && w.context.path === %s) : null;
"""

NOTEBOOK_READY = """(() => {
  const w = panel;
  if (!w || !w.sessionContext || !w.content) return null;
  app.shell.activateById(w.id);  // the notebook tracker's current widget: what the Run menu acts on
  if (app.shell.currentWidget !== w) return null;
  const k = w.sessionContext.session && w.sessionContext.session.kernel;
  if (!k || k.status !== "idle") return null;
  return {kernel: k.name, cells: w.content.widgets.length};
})()"""

RUN_FIRST_CELLS = """(async () => {
  const nb = panel;
  for (let i = 0; i <= %d; i++) {
    if (nb.content.widgets[i].model.type !== "code") continue;
    nb.content.activeCellIndex = i;
    await app.commands.execute("notebook:run-cell");
  }
  return true;
})()"""

PAGE_STATE = """(() => {
  const nb = panel;
  const cell = nb.content.widgets[%d].node;
  const prompts = [...nb.node.querySelectorAll(".jp-InputArea-prompt")].map(e => e.textContent.trim());
  const toolbar = [...nb.node.querySelectorAll(".jp-Toolbar-kernelName")].map(e => e.textContent.trim());
  return {
    output: [...cell.querySelectorAll(".jp-OutputArea-output")].map(e => e.innerText).join("\\n"),
    kernel_label: toolbar.join(" "),
    status: nb.sessionContext.session.kernel.status,
    prompts: prompts.filter(p => p.startsWith("[")),
  };
})()"""

KERNEL_PYTHON = """(async () => {
  const k = panel.sessionContext.session.kernel;
  const f = k.requestExecute({code: "import sys; print(sys.executable)", silent: false, store_history: false});
  let out = "";
  f.onIOPub = msg => { if (msg.header.msg_type === "stream") out += msg.content.text; };
  await f.done;
  return out.trim();
})()"""


def _open_notebook(page, url: str):
    "Open the notebook; a first load once sat at 'Connecting' (a server 500 while the kernel started): retry once."
    for attempt in (1, 2):
        page.call("Page.navigate", url=url) if attempt == 1 else page.call("Page.reload", ignoreCache=True)
        try:
            return _wait("the notebook opens with an idle kernel", lambda: page.js(NOTEBOOK_READY), 45)
        except AssertionError:
            if attempt == 2:
                raise


def test_jupyterlab_opens_the_toy_notebook_with_the_cskd_kernel_and_runs_it(lab, page):
    base, token = lab
    before = (ROOT / NOTEBOOK).read_bytes()
    ready = _open_notebook(page, f"{base}/lab/tree/{NOTEBOOK}?token={token}")
    assert ready["kernel"] == "cskd" and ready["cells"] > LAST_CELL, ready
    assert page.js(RUN_FIRST_CELLS % LAST_CELL) is True
    state = _wait(
        "the first cells' outputs appear on the page",
        lambda: (s := page.js(PAGE_STATE % LAST_CELL)) and "of a " in s["output"] and s["status"] == "idle" and s,
        60,
    )
    assert "cskd" in state["kernel_label"], state  # what the user sees in the notebook's toolbar
    assert "Error" not in state["output"] and len(state["prompts"]) >= 10, state
    python = page.js(KERNEL_PYTHON)
    assert Path(python).resolve() == Path(sys.executable).resolve(), python  # the project's interpreter
    sessions = _get(f"{base}/api/sessions?token={token}")
    assert [s["kernel"]["name"] for s in sessions if s["path"] == NOTEBOOK] == ["cskd"], sessions
    assert (ROOT / NOTEBOOK).read_bytes() == before  # opened and run, never saved
    assert not (ROOT / "nbs" / ".ipynb_checkpoints").exists()  # and nothing else written into the project
