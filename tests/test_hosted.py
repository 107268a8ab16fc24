"""The hosted-Jupyter branch of every chapter's first cell, and the widget switch it calls.

On Colab or Kaggle the course library may not be installed; the first cell must then stop with
one message saying how to install it without replacing the platform's torch. That branch is run
here for real, in a Python that cannot import `utils` (isolated mode, no site-packages)."""

import json
import subprocess
import sys
import types

import pytest

from utils import hosted
from utils.paths import REPO_ROOT

CHAPTERS = sorted((REPO_ROOT / "chapters").glob("*.ipynb"))
GUARD_END = "enable_widgets()"


def guard_of(path):
    cells = [c for c in json.loads(path.read_text(encoding="utf-8"))["cells"]
             if c["cell_type"] == "code"]
    source = "".join(cells[0]["source"])
    assert GUARD_END in source, f"{path.name}: the first cell has no hosted-Jupyter guard"
    return source[: source.index(GUARD_END)]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_first_cell_explains_the_hosted_install_when_utils_is_missing(path, tmp_path):
    done = subprocess.run([sys.executable, "-I", "-S", "-c", guard_of(path)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    message = done.stderr
    assert "requirements-hosted.txt" in message and "--no-deps -e ." in message
    assert "Traceback" not in message      # one message, not a stack of frames


def test_the_guard_passes_where_the_course_is_installed():
    source = guard_of(CHAPTERS[0]) + GUARD_END
    done = subprocess.run([sys.executable, "-c", source], cwd=REPO_ROOT / "chapters",
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_colab_gets_its_custom_widget_manager(monkeypatch):
    calls = []
    colab = types.ModuleType("google.colab")
    colab.output = types.SimpleNamespace(enable_custom_widget_manager=lambda: calls.append(1))
    google = types.ModuleType("google")
    google.__path__ = []
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(hosted.importlib.util, "find_spec", lambda name: object())
    assert hosted.enable_widgets().startswith("colab") and calls == [1]


def test_elsewhere_nothing_is_called(monkeypatch):
    monkeypatch.setattr(hosted.importlib.util, "find_spec", lambda name: None)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert hosted.enable_widgets() == "jupyter: widgets need no setup"
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert hosted.platform() == "kaggle"
