"""Every numbered lesson, run top to bottom in a real JupyterLab driven by headless Chromium.

nbval proves that the code runs; this test proves what a learner sees: no error output, every widget
view rendered (no "Error displaying widget" / "Loading widget..."), and the mask-ratio slider of
lesson 1 redrawing its figure when moved. It saves a screenshot per notebook and a ``checks.json``
under ``runs/browser/`` (``CMITM_BROWSER_OUT`` overrides it).

Needs Debian's Chromium (``apt-get install chromium``) and Python ``playwright`` (in the ``dev``
extra; no browser is ever downloaded). Without them the test skips, unless ``CMITM_REQUIRE_BROWSER=1``
(CI), where it fails. ``CMITM_BROWSER_NOTEBOOKS=01,02`` selects notebooks by prefix;
``CMITM_BROWSER_TIMEOUT`` is the per-notebook run limit in seconds (default 1200).

The notebooks are copied into a temporary folder that JupyterLab serves, so executed notebooks are
never saved into ``notebooks/`` (autosave is also switched off). Their relative paths still resolve
against the repository root (``cmitm_lib.paths``), as under nbval.
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
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest
from lesson_runs import parameterised, short_run

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("CMITM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
OUT = Path(os.environ.get("CMITM_BROWSER_OUT") or ROOT / "runs" / "browser")
TIMEOUT_S = float(os.environ.get("CMITM_BROWSER_TIMEOUT", "1200"))
SELECT = [s for s in os.environ.get("CMITM_BROWSER_NOTEBOOKS", "").split(",") if s]
NOTEBOOKS = [p for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
             if not SELECT or any(p.name.startswith(s) for s in SELECT)]

ERROR_MIME = "application/vnd.jupyter.error"
STDERR_MIME = "application/vnd.jupyter.stderr"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# JupyterLab user settings for the test: every cell kept in the DOM (no virtual scrolling), no
# autosave, no news / update pop-ups over the screenshots.
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none", "scrollPastEnd": False},
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}


def _missing_browser() -> str:
    """Why the browser test cannot run here, or "" when it can."""
    how = ("install Debian's Chromium (`apt-get install chromium`) and Python playwright "
           "(`.venv/bin/pip install -e '.[dev]'`; never `playwright install`)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM}: {how}"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return f"Python playwright is not installed: {how}"
    if not shutil.which("jupyter", path=str(Path(sys.executable).parent)):
        return f"no jupyter next to {sys.executable}: install the dev extra (`pip install -e '.[dev]'`)"
    return ""


# What a learner sees does not depend on how long a lesson trains (`make lessons` runs every lesson at its
# defaults): in the browser the training lessons run short, into runs/browser/lessons (papermill's
# injected-parameters cell after the `parameters` cell, as `papermill -p` would add it).
SHORT_RUN = short_run("runs/browser/lessons")


def served_copy(nb: Path, target: Path) -> None:
    """Copy a lesson for JupyterLab to serve, with the short-run parameters of SHORT_RUN injected."""
    nbformat.write(parameterised(nb, SHORT_RUN.get(nb.name[:2], {})), target)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """JupyterLab on 127.0.0.1, a free port, a random token, serving a temporary copy of notebooks/."""
    why = _missing_browser()
    if why:
        if os.environ.get("CMITM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"CMITM_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    base = tmp_path_factory.mktemp("lab")
    served = base / "notebooks"
    served.mkdir()
    for nb in NOTEBOOKS:
        served_copy(nb, served / nb.name)
    for name, values in LAB_SETTINGS.items():
        f = base / "settings" / f"{name}.jupyterlab-settings"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(values))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # a learner's kernel: inline figures
    env.update(JUPYTER_CONFIG_DIR=str(base / "config"), JUPYTER_DATA_DIR=str(base / "data"),
               JUPYTER_RUNTIME_DIR=str(base / "runtime"), IPYTHONDIR=str(base / "ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(base / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(base / "workspaces"))
    OUT.mkdir(parents=True, exist_ok=True)
    log = open(OUT / "jupyterlab.log", "w")
    jupyter = Path(sys.executable).parent / "jupyter"
    proc = subprocess.Popen([str(jupyter), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
                             "--ServerApp.port_retries=0", "--LabApp.extension_manager=readonly"]
                            + (["--allow-root"] if os.geteuid() == 0 else []),
                            cwd=served, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with code {proc.returncode}; see {OUT / 'jupyterlab.log'}")
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"JupyterLab did not answer on {url} in 120 s; see {OUT / 'jupyterlab.log'}")
                time.sleep(1)
        yield {"url": url, "token": token, "served": served}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def browser(lab):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def report():
    checks: dict[str, dict] = {}
    yield checks
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "checks.json").write_text(json.dumps(checks, indent=2))


def _api(lab, method: str, path: str):
    req = urllib.request.Request(f"{lab['url']}{path}", method=method,
                                 headers={"Authorization": f"token {lab['token']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = r.read()
    return json.loads(body) if body else None


# State of the run, read from the page: the prompt of every code cell ("[3]:", "[*]:" or "[ ]:") and
# how many error outputs there are.
RUN_STATE_JS = """() => {
  const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
  const errors = document.querySelectorAll('.jp-OutputArea-output[data-mime-type="%s"]').length;
  return {prompts, errors};
}""" % ERROR_MIME

# Everything the checks need, per code cell: execution prompt, output mime types, error texts, stderr
# texts, widget views (rendered or not), images that failed to load.
OUTPUTS_JS = """() => [...document.querySelectorAll('.jp-CodeCell')].map((cell, i) => {
  const outs = [...cell.querySelectorAll('.jp-OutputArea-output')];
  const text = el => el.innerText.slice(0, 2000);
  return {
    index: i,
    prompt: cell.querySelector('.jp-InputArea-prompt').textContent.trim(),
    mimes: outs.map(o => o.getAttribute('data-mime-type')),
    errors: outs.filter(o => o.getAttribute('data-mime-type') === '%s').map(text),
    stderr: outs.filter(o => o.getAttribute('data-mime-type') === '%s').map(text),
    // a widget view is an output without a rendered mime type (jupyterlab_widgets' renderer sets none)
    widgets: outs.filter(o => (!o.hasAttribute('data-mime-type') || o.getAttribute('data-mime-type') === '%s')
                              && !o.parentElement.closest('.jp-OutputArea-output')).map(o => ({
      rendered: o.querySelector('.jupyter-widgets') !== null && o.querySelector('.widget-error') === null,
      kind: [...(o.querySelector('.jupyter-widgets') || {classList: []}).classList].filter(c => c.startsWith('widget-')).join(' '),
      text: o.innerText.slice(0, 300),
      sliders: o.querySelectorAll('.widget-slider .noUi-handle').length,
      images: o.querySelectorAll('img').length,
    })),
    broken_images: [...cell.querySelectorAll('.jp-OutputArea-output img')].filter(im => !(im.complete && im.naturalWidth > 0)).length,
    images: cell.querySelectorAll('.jp-OutputArea-output img').length,
  };
})""" % (ERROR_MIME, STDERR_MIME, WIDGET_MIME)


def _run_all(page, name: str) -> float:
    """Run all cells through the Run menu and wait until the kernel is done. Returns seconds."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=120_000)
    # the kernel is connected and idle (the status bar says "Python 3 (ipykernel) | Idle")
    page.get_by_text(re.compile(r"\| Idle$")).first.wait_for(timeout=180_000)
    t0 = time.monotonic()
    for attempt in range(3):
        page.click(".jp-Notebook .jp-CodeCell .jp-InputPrompt")  # the notebook is the current widget
        page.click(".lm-MenuBar-item:has-text('Run')")
        page.click(".lm-Menu-item[data-command='runmenu:run-all']")
        try:  # queued cells show [*] at once
            page.wait_for_function("() => [...document.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')]"
                                   ".some(p => /\\*|\\d/.test(p.textContent))", timeout=15_000)
            break
        except PlaywrightTimeout:
            page.screenshot(path=str(OUT / f"{Path(name).stem}-run-all-not-started-{attempt}.png"))
            page.keyboard.press("Escape")
    else:
        raise AssertionError(f"{name}: Run > Run All Cells did not start the notebook (3 tries); see the screenshots in {OUT}")
    deadline = t0 + TIMEOUT_S
    started = False
    quiet_since = None
    while True:
        state = page.evaluate(RUN_STATE_JS)
        prompts = state["prompts"]
        busy = any("*" in p for p in prompts)
        started = started or busy or all(re.search(r"\d", p) for p in prompts)
        done = started and not busy and (all(re.search(r"\d", p) for p in prompts) or state["errors"])
        if done:  # done for two seconds in a row: the last outputs (and widget views) have arrived
            quiet_since = quiet_since or time.monotonic()
            if time.monotonic() - quiet_since > 2:
                return time.monotonic() - t0
        else:
            quiet_since = None
        if int(time.monotonic() - t0) % 60 == 0:
            print(f"{name}: {time.monotonic() - t0:.0f} s, prompts {' '.join(prompts)}", flush=True)
        if time.monotonic() > deadline:
            page.screenshot(path=str(OUT / f"{Path(name).stem}-timeout.png"))
            running = [i for i, p in enumerate(prompts) if "*" in p]
            raise AssertionError(f"{name}: still running after {TIMEOUT_S:.0f} s (code cells running: {running}); "
                                 f"set CMITM_BROWSER_TIMEOUT to allow more")
        time.sleep(1)


def _full_screenshot(page, path: Path):
    """The whole notebook in one picture: make the window as tall as the notebook, then shoot."""
    left = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if left.count():  # fold the file browser away: the screenshot shows the notebook only
        left.first.click()
    page.evaluate("() => document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook').forEach(e => e.scrollTop = 0)")
    height = page.evaluate("() => Math.max(...[...document.querySelectorAll('.jp-WindowedPanel-outer, .jp-Notebook')]"
                           ".map(e => e.scrollHeight))")
    page.set_viewport_size({"width": 1280, "height": int(min(height + 200, 30000))})
    page.wait_for_timeout(1500)
    page.screenshot(path=str(path))
    page.set_viewport_size({"width": 1280, "height": 900})


def _move_mask_ratio_slider(page, name: str) -> dict:
    """Press the right arrow on the "mask ratio" slider of the masking widget; the figure must change."""
    interact = page.locator(".widget-interact").filter(has=page.locator(".widget-label", has_text="mask ratio")).first
    slider = interact.locator(".widget-slider, .widget-hslider").filter(has=page.locator(".widget-label", has_text="mask ratio")).first
    figure = interact.locator("img").first
    readout = slider.locator(".widget-readout")
    assert figure.count() == 1, f"{name}: the masking widget shows no figure"
    before_src, before_value = figure.get_attribute("src"), readout.inner_text()
    interact.scroll_into_view_if_needed()
    interact.screenshot(path=str(OUT / f"{Path(name).stem}-slider-before.png"))
    slider.locator(".noUi-handle").first.focus()
    page.keyboard.press("ArrowRight")
    deadline = time.monotonic() + 120
    print(f"{name}: pressed ArrowRight on the mask-ratio slider (at {before_value})", flush=True)
    while figure.count() == 0 or figure.get_attribute("src") == before_src:
        assert time.monotonic() < deadline, f"{name}: moving the mask-ratio slider did not change the figure in 120 s"
        page.wait_for_timeout(500)
    after_value = readout.inner_text()
    assert after_value != before_value, f"{name}: the slider readout stayed at {before_value}"
    page.wait_for_timeout(500)
    interact.screenshot(path=str(OUT / f"{Path(name).stem}-slider-after.png"))
    return {"mask_ratio_before": before_value, "mask_ratio_after": after_value, "figure_changed": True}


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_lesson_in_jupyterlab(notebook: Path, lab, browser, report):
    name = notebook.name
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    try:
        page.goto(f"{lab['url']}/lab/tree/{name}?reset&token={lab['token']}", timeout=120_000)
        seconds = _run_all(page, name)
        print(f"{name}: all cells ran in {seconds:.0f} s", flush=True)
        page.wait_for_timeout(2000)  # widget views render asynchronously
        cells = page.evaluate(OUTPUTS_JS)
        n_code = sum(c.cell_type == "code" for c in nbformat.read(lab["served"] / name, as_version=4).cells)
        widgets = [w for c in cells for w in c["widgets"]]
        check = {
            "seconds": round(seconds, 1),
            "code_cells": len(cells),
            "code_cells_executed": sum(bool(re.search(r"\d", c["prompt"])) for c in cells),
            "error_outputs": [{"cell": c["index"], "text": e} for c in cells for e in c["errors"]],
            "tracebacks_on_stderr": [{"cell": c["index"], "text": s} for c in cells for s in c["stderr"]
                                     if "Traceback (most recent call last)" in s],
            "stderr_outputs": [{"cell": c["index"], "text": s[:300]} for c in cells for s in c["stderr"]],
            "widget_views": len(widgets),
            "widget_views_rendered": sum(w["rendered"] and "Error displaying widget" not in w["text"]
                                         and "Loading widget" not in w["text"] for w in widgets),
            "widget_kinds": [w["kind"] for w in widgets],
            "widget_problems": [w["text"] for w in widgets if not w["rendered"] or "Error displaying widget" in w["text"]
                                or "Loading widget" in w["text"]]
                               + [f"an interactive widget without a figure: {w['text'][:100]}" for w in widgets
                                  if "widget-interact" in w["kind"] and not w["images"]],
            "sliders": sum(w["sliders"] for w in widgets),
            "images": sum(c["images"] for c in cells),
            "broken_images": sum(c["broken_images"] for c in cells),
            "console_errors": console_errors[:20],
        }
        report[name] = check
        _full_screenshot(page, OUT / f"{notebook.stem}.png")
        check["screenshot"] = str(OUT / f"{notebook.stem}.png")

        assert check["code_cells"] == n_code, f"{name}: {n_code} code cells in the file, {check['code_cells']} in the page"
        assert not check["error_outputs"], f"{name}: error output: {check['error_outputs']}"
        assert not check["tracebacks_on_stderr"], f"{name}: traceback on stderr: {check['tracebacks_on_stderr']}"
        assert check["code_cells_executed"] == n_code, f"{name}: only {check['code_cells_executed']}/{n_code} code cells ran"
        assert not check["widget_problems"], f"{name}: widget views that did not render: {check['widget_problems']}"
        assert not check["broken_images"], f"{name}: {check['broken_images']} figures did not load"
        if name.startswith("01_"):
            assert check["sliders"] >= 3, f"{name}: expected the masking widget's sliders, found {check['sliders']}"
            check.update(_move_mask_ratio_slider(page, name))
    finally:
        page.close()
        for s in _api(lab, "GET", "/api/sessions") or []:  # free the kernel's memory before the next lesson
            _api(lab, "DELETE", f"/api/sessions/{s['id']}")


def test_committed_notebooks_stay_output_free():
    """Running the lessons in the browser must not write outputs into notebooks/."""
    for nb_path in NOTEBOOKS:
        nb = nbformat.read(nb_path, as_version=4)
        dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
        assert not dirty, f"{nb_path.name}: code cells {dirty} carry outputs or execution counts"
