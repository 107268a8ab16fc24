"""Shared test settings."""

import os

import matplotlib

matplotlib.use("Agg")  # tests never open windows

from hypothesis import settings  # noqa: E402

# CI machines are small and shared: a property test is judged on its examples, not its speed.
settings.register_profile("course", deadline=None, max_examples=60)
settings.load_profile("course")

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


import shutil  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.browser import CHROMIUM_FLAGS, JupyterLabServer, Lab, find_chromium  # noqa: E402


@pytest.fixture(scope="session")
def lab():
    """JupyterLab + headless Chromium. Skipped without Chromium, except under CI=true."""
    chromium = find_chromium()
    if chromium is None:
        reason = "Chromium is not installed (apt-get install chromium) — browser test not run"
        if IN_CI:
            pytest.fail(reason + "; CI must install it (.ci/run does)")
        print(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    root = Path(tempfile.mkdtemp(prefix="course-lab-"))
    server = JupyterLabServer(root)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS,
                                                 headless=True)
            try:
                yield Lab(server, browser)
            finally:
                browser.close()
    finally:
        server.close()
        shutil.rmtree(root, ignore_errors=True)
