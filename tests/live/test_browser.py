"""Browser tests: every notebook runs in JupyterLab in headless Chromium, and every widget responds.

For each notebook in notebooks/ (a copy taken at the start, so edits in progress elsewhere do not
change the run half-way):

1. JupyterLab (this project's environment, ci preset, offline) opens it; Run > Run All Cells;
   we wait on DOM state (every code cell numbered, nothing queued, kernel idle), never fixed sleeps;
2. no cell may show an error (a traceback in an stderr/error output) and no widget a red (danger)
   progress bar;
3. every visible widget control in the outputs is exercised: each slider moved (arrow keys on its
   focused noUiSlider handle, towards the side it can still move to), each dropdown changed, each button
   clicked, each text box edited; after each slider, dropdown and button action (and a "prompt" edit)
   what the notebook shows (plotly figures, HTML widgets, widget outputs, images: everything except the
   controls themselves) must change within a timeout;
4. the browser console must show no errors (``console`` messages of type error and ``pageerror``),
   except the harmless noise listed in ``IGNORED_CONSOLE``.

Per notebook the test prints how many controls of each kind it found and exercised and its wall
times; with ``WORKBENCH_BROWSER_REPORT=path.json`` it also writes them there (one JSON object keyed by
notebook). Needs Chromium (Debian's ``chromium`` package) and the ``playwright`` Python package (the
``dev`` extra); without Chromium every test skips with a one-line hint. Never downloads a browser.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
REPORT_ENV = "WORKBENCH_BROWSER_REPORT"
ENABLE_HINT = "browser tests need Chromium: install Debian's chromium: apt-get install chromium"

RUN_TIMEOUT_S = float(os.environ.get("WORKBENCH_BROWSER_RUN_TIMEOUT", "1200"))  # one notebook's Run All
CHANGE_TIMEOUT_S = 90.0  # a widget's redraw (a forward pass, a BPE retrain, a sample) on a busy machine
FIRST_STEP_TIMEOUT_S = 20.0  # a slider's first one-step move; if nothing changed, it jumps to an end

# Console errors that say nothing about the notebooks or widgets, with the reason each is harmless:
IGNORED_CONSOLE = [
    # JupyterLab asks a few optional server endpoints that this server does not serve (the
    # offline news/update check, the optional language-pack and workspace lookups); the browser
    # logs each 404 as "Failed to load resource". Real widget or kernel failures never show up as
    # a bare 404 of a resource: they raise (pageerror) or log their own error text.
    re.compile(r"Failed to load resource: the server responded with a status of 404"),
]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("WORKBENCH_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def browser_path():
    path = chromium_path()
    if path is None:
        pytest.skip(ENABLE_HINT)
    pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'")
    return path


@pytest.fixture(scope="session")
def lab(browser_path, tmp_path_factory):
    """A JupyterLab server on a temporary copy of notebooks/, with its own settings (no user config)."""
    base = tmp_path_factory.mktemp("lab")
    workdir = base / "notebooks"
    shutil.copytree(ROOT / "notebooks", workdir, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "runs"))
    for path in workdir.glob("*.ipynb"):  # committed outputs and numbers would look like a finished run
        notebook = json.loads(path.read_text())
        for cell in notebook.get("cells", []):
            if cell.get("cell_type") == "code":
                cell["outputs"], cell["execution_count"] = [], None
        notebook.get("metadata", {}).pop("widgets", None)
        path.write_text(json.dumps(notebook, indent=1))
    settings = base / "settings"
    # Render every cell: JupyterLab 4's windowed notebook leaves cells outside the viewport out of the DOM.
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    # autoStartDefaultKernel: no "Select Kernel" dialog before the notebook's own python3 kernel starts
    tracker.write_text(json.dumps({"windowingMode": "none", "autoStartDefaultKernel": True}))
    notify = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notify.parent.mkdir(parents=True)
    notify.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = dict(os.environ)
    env.update({
        "WORKBENCH_PRESET": "ci", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(base / "workspaces"),
        "JUPYTER_CONFIG_DIR": str(base / "config"), "JUPYTER_RUNTIME_DIR": str(base / "runtime"),
        "JUPYTER_PREFER_ENV_PATH": "1",
    })
    for key in ("TQDM_DISABLE", "WORKBENCH_STATIC_FIGURES"):  # what a student sees: live bars, live widgets
        env.pop(key, None)
    if os.environ.get("WORKBENCH_CACHE"):
        env["WORKBENCH_CACHE"] = os.environ["WORKBENCH_CACHE"]
    port, token = _free_port(), secrets.token_hex(16)
    log = open(base / "jupyterlab.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--allow-root", "--no-browser", "--ip", "127.0.0.1",
         "--port", str(port), f"--ServerApp.token={token}", "--notebook-dir", str(workdir),
         "--ServerApp.port_retries=0"],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"JupyterLab exited with {proc.returncode}: {(base / 'jupyterlab.log').read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5).read()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("JupyterLab did not answer within 120 s")
                time.sleep(0.5)
        yield {"url": url, "token": token, "dir": workdir, "log": base / "jupyterlab.log"}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def browser(browser_path):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=browser_path, headless=True,
                                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def report():
    results = {}
    yield results
    path = os.environ.get(REPORT_ENV)
    if path and results:
        existing = {}
        try:
            existing = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            pass
        existing.update(results)
        Path(path).write_text(json.dumps(existing, indent=2) + "\n")


# --------------------------------------------------------------------------- page helpers

# What a notebook shows, minus the controls: a short hash, so polling it is cheap.
SNAPSHOT_JS = """() => {
  const parts = [];
  const root = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook');
  if (!root) return '';
  for (const el of root.querySelectorAll(
      '.js-plotly-plot .main-svg, .widget-html-content, .jp-RenderedImage img, ' +
      '.widget-output .jp-OutputArea-output, .jp-OutputArea-output > .jp-RenderedText, .jp-RenderedHTML')) {
    if (el.closest('.widget-slider, .widget-dropdown, .widget-button, .widget-text, .widget-textarea')) continue;
    parts.push(el.tagName === 'IMG' ? el.src : el.innerHTML);
  }
  const text = parts.join('\\u0000');
  let h1 = 0x811c9dc5, h2 = 0;
  for (let i = 0; i < text.length; i++) {
    h1 = Math.imul(h1 ^ text.charCodeAt(i), 16777619);
    h2 = (h2 * 31 + text.charCodeAt(i)) | 0;
  }
  return text.length + ':' + (h1 >>> 0).toString(16) + ':' + (h2 >>> 0).toString(16);
}"""

# Done: every code cell has a number, none is queued or running ([*]), and the kernel is idle.
DONE_JS = """() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return false;
  const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
  if (prompts.length === 0 || prompts.some(p => p.includes('*'))) return false;
  const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
  if (indicator && indicator.getAttribute('data-status') && indicator.getAttribute('data-status') !== 'idle')
    return false;
  const bar = document.querySelector('#jp-main-statusbar');
  if (bar && !/\\|\\s*Idle/.test(bar.textContent)) return false;
  return prompts.every(p => /\\[\\d+\\]/.test(p)) ||
         [...panel.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
           .some(o => /Traceback|Error/.test(o.textContent));
}"""

STARTED_JS = """() => [...document.querySelectorAll(
    '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')]
    .some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"""


def _wait_change(page, before: str, timeout_s: float = CHANGE_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.evaluate(SNAPSHOT_JS) != before:
            return True
        page.wait_for_timeout(250)
    return False


def _settle(page, quiet_s: float = 1.0, timeout_s: float = 60.0) -> None:
    """Wait until the display stops changing for ``quiet_s`` (a redraw can arrive in several messages)."""
    deadline = time.monotonic() + timeout_s
    state = lambda: (page.evaluate(SNAPSHOT_JS), page.locator(".jupyter-widgets").count())  # noqa: E731
    last, since = state(), time.monotonic()
    while time.monotonic() < deadline:
        page.wait_for_timeout(250)
        now = state()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return


def _label(control) -> str:
    """The widget's description label (e.g. 'temperature'), for the report and messages."""
    return control.evaluate("""el => {
      const w = el.closest('.widget-inline-hbox, .widget-hbox, .widget-box, .jupyter-widgets') || el;
      const l = w.querySelector('.widget-label');
      return (l && l.textContent.trim()) || el.getAttribute('aria-label') || el.textContent.trim() || '?';
    }""")


def _move_slider(page, slider) -> str | None:
    """Move one noUiSlider one step: an arrow key on its focused handle, towards the side it can still go.
    Returns the key that undoes it (None when the slider cannot move)."""
    handle = slider.locator(".noUi-handle").first
    now = float(handle.get_attribute("aria-valuenow") or 0)
    high = float(handle.get_attribute("aria-valuemax") or 0)
    low = float(handle.get_attribute("aria-valuemin") or 0)
    if high == low:
        return None
    key, undo = ("ArrowLeft", "ArrowRight") if now >= high else ("ArrowRight", "ArrowLeft")
    handle.focus()
    handle.press(key)
    return undo


# The toolbar's execution indicator says 'idle' while the kernel is still connecting; the status bar
# ("Python 3 (ipykernel) | Idle") says when it really is.
KERNEL_IDLE_JS = """() => {
  const i = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator');
  const bar = document.querySelector('#jp-main-statusbar');
  return !!i && i.getAttribute('data-status') === 'idle' && !!bar && /\\|\\s*Idle/.test(bar.textContent); }"""


def _wait_kernel_ready(page, timeout_s: float = 180.0) -> None:
    """The kernel is idle and no dialog is open (a "Select Kernel" dialog is accepted: python3)."""
    deadline = time.monotonic() + timeout_s
    calm_since = None
    while time.monotonic() < deadline:
        dialog = page.locator(".jp-Dialog .jp-mod-accept:visible")
        if dialog.count():
            dialog.first.click()
            calm_since = None
        elif page.evaluate(KERNEL_IDLE_JS):
            calm_since = calm_since or time.monotonic()
            if time.monotonic() - calm_since >= 2.0:
                return
        else:
            calm_since = None
        page.wait_for_timeout(250)
    raise AssertionError(f"the kernel was not idle (or a dialog stayed open) after {timeout_s:.0f} s")


def _run_all(page, tries: int = 3) -> None:
    """Run > Run All Cells, until a cell is queued or running (a click just after start-up can be lost)."""
    for attempt in range(tries):
        page.keyboard.press("Escape")
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-item:visible", has_text=re.compile(r"^Run All Cells")).first.click()
        try:
            page.wait_for_function(STARTED_JS, timeout=30_000)
            return
        except Exception:  # noqa: BLE001 - playwright's TimeoutError; try again
            _wait_kernel_ready(page)
    raise AssertionError(f"Run All Cells started no cell ({tries} tries)")


def _errors_in_outputs(page) -> list[str]:
    texts = page.evaluate("""() => [...document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output')]
        .filter(o => o.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr' ||
                     o.querySelector('[data-mime-type="application/vnd.jupyter.stderr"]'))
        .map(o => o.textContent)""")
    return [t[-1500:] for t in texts if "Traceback" in t or re.search(r"\w+Error\b", t)]


def _red_progress_bars(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll(
        '.jp-NotebookPanel:not(.lm-mod-hidden) .progress-bar-danger, ' +
        '.jp-NotebookPanel:not(.lm-mod-hidden) .widget-progress .bar-danger')]
        .filter(el => el.offsetParent !== null).length""")


def _shutdown_kernels(lab) -> None:
    base, token = lab["url"], lab["token"]
    try:
        sessions = json.loads(urllib.request.urlopen(f"{base}/api/sessions?token={token}", timeout=10).read())
        for session in sessions:
            request = urllib.request.Request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")
            urllib.request.urlopen(request, timeout=30).read()
    except OSError:
        pass


# --------------------------------------------------------------------------- the test

@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_widgets_respond_in_the_browser(notebook, lab, browser, report):
    console_errors: list[str] = []
    ignored: list[str] = []
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    def on_console(message):
        if message.type == "error":
            text = message.text
            (ignored if any(p.search(text) for p in IGNORED_CONSOLE) else console_errors).append(text[:500])

    page.on("console", on_console)
    page.on("pageerror", lambda error: console_errors.append(f"pageerror: {error}"[:500]))
    record = {"found": {}, "exercised": {}, "unchanged": [], "ignored_console": ignored}
    start = time.monotonic()
    try:
        page.goto(f"{lab['url']}/lab/tree/{notebook.name}?token={lab['token']}", wait_until="domcontentloaded",
                  timeout=120_000)
        page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell", timeout=120_000)
        _wait_kernel_ready(page)
        _run_all(page)
        page.wait_for_function(DONE_JS, timeout=RUN_TIMEOUT_S * 1000, polling=1000)
        record["run_all_s"] = round(time.monotonic() - start, 1)

        errors = _errors_in_outputs(page)
        assert not errors, f"{notebook.name}: a cell shows an error:\n" + "\n---\n".join(errors)
        unnumbered = page.evaluate("""() => [...document.querySelectorAll(
            '.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .jp-InputArea-prompt')]
            .filter(p => !/\\[\\d+\\]/.test(p.textContent)).length""")
        assert unnumbered == 0, f"{notebook.name}: {unnumbered} code cells did not run"
        assert _red_progress_bars(page) == 0, f"{notebook.name}: a progress bar ended red (danger)"
        _settle(page)

        exercise_start = time.monotonic()
        outputs = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell-outputArea")
        kinds = {
            "slider": outputs.locator(".widget-slider:visible, .widget-hslider:visible").filter(
                has=page.locator(".noUi-handle")),
            "dropdown": outputs.locator(".widget-dropdown:visible select"),
            "button": outputs.locator("button.jupyter-button:visible, .widget-button:visible"),
            "text": outputs.locator(".widget-text:visible input, .widget-textarea:visible textarea"),
        }
        for kind, locator in kinds.items():
            record["found"][kind] = locator.count()
            record["exercised"][kind] = 0
        for kind, locator in kinds.items():
            for i in range(locator.count()):
                control = locator.nth(i)
                control.scroll_into_view_if_needed()
                label = _label(control)
                before = page.evaluate(SNAPSHOT_JS)
                must_change = True
                undo = None  # each control is put back afterwards, so one setting cannot mask the next
                if kind == "slider":
                    key = _move_slider(page, control)
                    if key is None:
                        record["unchanged"].append(f"slider {label!r}: min == max, cannot move")
                        continue
                    undo = lambda c=control, k=key: c.locator(".noUi-handle").first.press(k)  # noqa: E731
                elif kind == "dropdown":
                    options = control.evaluate("el => [...el.options].map(o => o.value)")
                    current = control.input_value()
                    others = [o for o in options if o != current]
                    if not others:
                        record["unchanged"].append(f"dropdown {label!r}: one option only")
                        continue
                    control.select_option(others[0])
                    undo = lambda c=control, v=current: c.select_option(v)  # noqa: E731
                elif kind == "button":
                    control.click()
                else:  # text: a prompt redraws; other boxes (seed) only matter on the next Sample
                    must_change = "prompt" in label.lower()
                    value = control.input_value()
                    if control.get_attribute("type") == "number":
                        control.fill(str(int(float(value or 0)) + 1))
                    else:
                        control.fill(value + (" " if not value.endswith(" ") else "a"))
                    control.press("Tab")
                changed = _wait_change(page, before, FIRST_STEP_TIMEOUT_S if kind == "slider"
                                       else CHANGE_TIMEOUT_S if must_change else 3.0)
                if kind == "slider" and not changed:
                    # One step can legitimately show the same thing (16 more BPE merges that this text never
                    # uses); then jump to the far end (End/Home) and give that the full time.
                    handle = control.locator(".noUi-handle").first
                    jump = "End" if key == "ArrowLeft" else "Home"  # away from where it started
                    jump = "Home" if handle.get_attribute("aria-valuenow") == handle.get_attribute(
                        "aria-valuemax") else jump
                    handle.press(jump)
                    undo = lambda h=handle, k=("Home" if jump == "End" else "End"): h.press(k)  # noqa: E731
                    record.setdefault("jumped", []).append(label)
                    changed = _wait_change(page, before, CHANGE_TIMEOUT_S)
                record["exercised"][kind] += 1
                if must_change:
                    assert changed, f"{notebook.name}: the display did not change after using {kind} {label!r}"
                elif not changed:
                    record["unchanged"].append(f"{kind} {label!r} (no redraw expected)")
                _settle(page)
                if undo is not None:
                    undo()
                    _wait_change(page, page.evaluate(SNAPSHOT_JS), 10.0)
                    _settle(page)
                errors = _errors_in_outputs(page)
                assert not errors, f"{notebook.name}: error after using {kind} {label!r}:\n" + "\n".join(errors)
        record["exercise_s"] = round(time.monotonic() - exercise_start, 1)
        record["wall_s"] = round(time.monotonic() - start, 1)
        assert not console_errors, f"{notebook.name}: browser console errors:\n" + "\n".join(console_errors)
        record["result"] = "passed"
    except BaseException as error:
        record["result"] = f"failed: {type(error).__name__}: {str(error)[:800]}"
        record.setdefault("wall_s", round(time.monotonic() - start, 1))
        record["console_errors"] = console_errors
        try:
            shot = Path(tempfile.gettempdir()) / f"workbench-browser-{notebook.stem}.png"
            page.screenshot(path=str(shot), full_page=True)
            record["screenshot"] = str(shot)
        except Exception:  # noqa: BLE001 - the screenshot is a courtesy
            pass
        raise
    finally:
        report[notebook.stem] = record
        print(f"\n[browser] {notebook.stem}: {json.dumps(record)}")
        _shutdown_kernels(lab)
        context.close()
