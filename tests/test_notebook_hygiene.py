"""Stored notebooks must read well without being run: outputs from one clean top-to-bottom
run, no errors, no paths of the author's machine, a kernelspec, renderable widget metadata,
and a bounded size. Refresh outputs with `make outputs` when one of these fails."""

import json
import re
from pathlib import Path

import pytest

from utils.paths import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "chapters").glob("*.ipynb")) + sorted(
    (REPO_ROOT / "solutions").glob("*.ipynb"))
MACHINE_PATH = re.compile(r"(/tmp/|/root/|/home/[^/\s]+/|/Users/[^/\s]+/|/work/|[A-Z]:\\\\Users)")
MAX_BYTES = 2 * 1024 * 1024


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [cell for cell in nb["cells"] if cell["cell_type"] == "code"]


def test_there_are_notebooks():
    assert (REPO_ROOT / "chapters" / "00_introduction.ipynb") in NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.name}")
class TestHygiene:
    def test_size_bounded(self, path):
        assert path.stat().st_size < MAX_BYTES, f"{path.name} is over 2 MB: shrink its figures"

    def test_kernelspec_set(self, path):
        spec = load(path)["metadata"].get("kernelspec", {})
        assert spec.get("name") == "python3", "JupyterLab would ask which kernel to use"

    def test_outputs_from_a_clean_run(self, path):
        counts = [cell.get("execution_count") for cell in code_cells(load(path))]
        assert counts == list(range(1, len(counts) + 1)), (
            f"execution counts {counts} are not 1..n: re-run with `make outputs`")

    def test_no_error_outputs(self, path):
        for i, cell in enumerate(code_cells(load(path))):
            for out in cell.get("outputs", []):
                assert out["output_type"] != "error", f"code cell {i} stored an error: {out.get('ename')}"
                if out["output_type"] == "stream" and out.get("name") == "stderr":
                    assert "Traceback" not in "".join(out["text"]), f"code cell {i} printed a traceback"

    def test_no_machine_paths(self, path):
        for i, cell in enumerate(code_cells(load(path))):
            text = json.dumps(cell.get("outputs", []))
            match = MACHINE_PATH.search(text)
            assert match is None, f"code cell {i} output shows a machine path {match.group(0)!r}"

    def test_widget_metadata_renderable(self, path):
        widgets = load(path)["metadata"].get("widgets")
        if widgets is not None:  # absent is fine; present must carry `state` for GitHub
            assert "state" in widgets.get("application/vnd.jupyter.widget-state+json", {})

    def test_every_figure_cell_has_a_picture(self, path):
        """A cell that builds a widget also stores a static image of it for static readers."""
        for i, cell in enumerate(code_cells(load(path))):
            kinds = {key for out in cell.get("outputs", []) for key in out.get("data", {})}
            if "application/vnd.jupyter.widget-view+json" in kinds:
                assert "image/png" in kinds, (
                    f"code cell {i} shows a widget but no static picture of its default state")
