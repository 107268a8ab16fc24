"""JupyterLab in headless Chromium, for tests that move a widget in a real browser.

`JupyterLab` starts `jupyter lab` on a free localhost port with no token, serving a temporary
folder (so running a notebook there never rewrites the stored notebooks). `Lab` opens a
notebook in Chromium through Playwright, runs every cell and hands back the page.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import TimeoutError as PlaywrightTimeout

CHROMIUM_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-quic", "--disable-dev-shm-usage"]
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def find_chromium() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JupyterLabServer:
    """A JupyterLab server for one test session, stopped (and its folder removed) on close."""

    def __init__(self, root: Path):
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # JupyterLab 4 only renders the cells in view ("windowing"); the tests need every
        # cell's prompt and output in the page, so switch windowing off for this server.
        settings = root / ".settings" / "@jupyterlab" / "notebook-extension"
        settings.mkdir(parents=True)
        (settings / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
        env = {**os.environ, "PYTHONUNBUFFERED": "1",
               "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings")}
        log = open(root / "jupyter.log", "w")  # noqa: SIM115 (closed with the process)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={self.port}",
             "--ip=127.0.0.1", f"--ServerApp.root_dir={root}", "--IdentityProvider.token=",
             "--ServerApp.password=", "--ServerApp.disable_check_xsrf=True",
             "--allow-root", "--LabApp.news_url=",
             # A workspace of its own: JupyterLab otherwise shares ~/.jupyter/lab/workspaces
             # between servers and may reopen another test's (deleted) notebook.
             f"--LabApp.workspaces_dir={root / '.workspaces'}",
             "--ServerApp.open_browser=False"],
            stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
        self._wait_until_up()

    def _wait_until_up(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError("jupyter lab exited:\n" + (self.root / "jupyter.log").read_text())
            try:
                with urllib.request.urlopen(f"{self.url}/api/status", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("jupyter lab did not start within 90 s:\n"
                           + (self.root / "jupyter.log").read_text())

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Lab:
    """What a browser test gets: open a notebook in JupyterLab, run it, return the page."""

    def __init__(self, server: JupyterLabServer, browser):
        self.server = server
        self.browser = browser
        self._count = 0

    def run_notebook(self, path: Path, timeout_s: float = 420) -> object:
        """Open a copy of a repository notebook, run all its cells, return the Page."""
        self._count += 1
        name = f"{self._count:02d}_{Path(path).name}"
        # Without its stored outputs: every prompt then reads [ ] until this run reaches it, so
        # "all cells show a number" really means this run finished (stored execution counts
        # would make a slow run look finished at once).
        notebook = json.loads(Path(path).read_text(encoding="utf-8"))
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
        (self.server.root / name).write_text(json.dumps(notebook), encoding="utf-8")
        return self._open_and_run(name, timeout_s)

    def run_cells(self, sources: list[str], timeout_s: float = 420) -> object:
        """Open a new notebook made of these code cells, run them all, return the Page."""
        self._count += 1
        name = f"{self._count:02d}_cells.ipynb"
        cells = [{"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                  "source": source} for source in sources]
        notebook = {"cells": cells, "metadata": {"kernelspec": KERNELSPEC},
                    "nbformat": 4, "nbformat_minor": 5}
        (self.server.root / name).write_text(json.dumps(notebook))
        return self._open_and_run(name, timeout_s)

    def _open_and_run(self, name: str, timeout_s: float):
        page = self.browser.new_page(viewport={"width": 1400, "height": 1000})
        # On 2 busy cores (the other test worker training a model) a widget can take well
        # over Playwright's default 30 s to render after its cell ran: allow 2 minutes.
        page.set_default_timeout(120_000)
        page.goto(f"{self.server.url}/lab/tree/{name}?reset")  # ?reset: a clean workspace
        # Wait for the kernel to start: the toolbar's (visually hidden) status label reads
        # "Kernel status: Idle" once the kernel is ready.
        page.locator(".jp-Notebook").first.wait_for(timeout=90_000)
        page.get_by_text("Kernel status: Idle").first.wait_for(state="attached", timeout=120_000)
        for _ in range(3):  # on a loaded machine the first click can land before the menu is live
            self._answer_dialogs(page)
            try:
                page.locator(".jp-Notebook").first.click(timeout=30_000)
                page.get_by_role("menuitem", name="Run", exact=True).click(timeout=30_000)
                page.get_by_role("menuitem", name="Run All Cells", exact=True).click(timeout=30_000)
            except PlaywrightTimeout:  # a dialog opened between the check and the click
                continue
            if self._started(page, within_s=30):
                break
        self._wait_for_all_cells(page, timeout_s)
        return page

    @staticmethod
    def _answer_dialogs(page) -> None:
        """Accept any modal dialog JupyterLab put up while starting (on a loaded machine it can
        ask which kernel to use, or report a slow kernel start); it would block every click.

        Its text is printed, so a dialog that hides a real failure shows in the test's output;
        such a failure still fails the test later, when the cells do not run.
        """
        dialogs = page.locator("dialog.jp-Dialog")
        for _ in range(3):
            if not dialogs.count():
                return
            print("JupyterLab dialog answered:", dialogs.first.inner_text().replace("\n", " | "))
            accept = dialogs.first.locator(".jp-Dialog-button.jp-mod-accept")
            if accept.count():
                accept.first.click()
            else:
                page.keyboard.press("Escape")
            time.sleep(1)

    @staticmethod
    def _started(page, within_s: float) -> bool:
        """True once any code cell's prompt shows `[*]` or a number."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            if any(p.strip() not in ("", "[ ]:") for p in prompts):
                return True
            time.sleep(0.5)
        return False

    @staticmethod
    def _wait_for_all_cells(page, timeout_s: float) -> None:
        """Every code cell's prompt shows a number (not blank, not `*`) once it has run."""
        deadline = time.monotonic() + timeout_s
        stalled_since, rerun = None, False
        while time.monotonic() < deadline:
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            # On two loaded cores a Run All can leave a cell unqueued (seen once in CI: the
            # first prompt stayed [ ] while the second ran). If some cells have not run, none is
            # running and the kernel is idle for 60 s, Run All once more (cells here run twice
            # safely: tests/rerun.py checks that of the chapters); it is printed, not hidden.
            waiting = any(p.strip() in ("", "[ ]:") for p in prompts)
            idle = not any(p.strip() == "[*]:" for p in prompts) and page.get_by_text(
                "Kernel status: Idle").count()
            if waiting and idle and not rerun:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 60:
                    print("cells left unrun with the kernel idle; Run All again:", prompts)
                    page.get_by_role("menuitem", name="Run", exact=True).click(timeout=30_000)
                    page.get_by_role("menuitem", name="Run All Cells", exact=True).click(
                        timeout=30_000)
                    rerun = True
            else:
                stalled_since = None
            if prompts and all(p.strip().startswith("[") and p.strip()[1:-2].isdigit()
                               for p in prompts):
                errors = page.locator(".jp-OutputArea-output[data-mime-type="
                                      "'application/vnd.jupyter.stderr'] :text('Traceback')")
                if errors.count():
                    raise AssertionError("a cell raised in the browser:\n" + errors.first.inner_text())
                return
            time.sleep(0.5)
        raise TimeoutError(f"cells did not finish within {timeout_s} s; prompts: {prompts}")


def image_widths(widget) -> tuple[float, float]:
    """(natural width, rendered width) in CSS pixels of the first picture inside `widget`, once
    it has loaded: equal when the picture is shown at its own size, not stretched or shrunk."""
    image = widget.locator("img").first
    image.page.wait_for_function("img => img.complete && img.naturalWidth > 0",
                                 arg=image.element_handle(), timeout=30_000)
    return image.evaluate("img => [img.naturalWidth, img.getBoundingClientRect().width]")


def clipped_texts(widget) -> list[str]:
    """Labels and buttons inside `widget` whose text does not fit (cut to 'M…')."""
    return widget.evaluate(
        "el => [...el.querySelectorAll('.widget-label, .widget-toggle-button, button')]"
        ".filter(e => e.offsetParent && e.scrollWidth > e.clientWidth + 1)"
        ".map(e => e.innerText)")
