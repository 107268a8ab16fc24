"""Every chapter 00-06, and the capstone 11 (which balances the two halves), runs top to bottom
in a fresh kernel, and then every code cell runs once more in the same kernel without an error
(see tests/rerun.py). The chapters are split over two files so that `pytest -n 2 --dist
loadfile` runs the halves side by side."""

import pytest

from tests.rerun import run_twice
from utils.paths import REPO_ROOT

CHAPTERS = [path for path in sorted((REPO_ROOT / "chapters").glob("*.ipynb"))
            if path.name[:2] in ("00", "01", "02", "03", "04", "05", "06", "11")]


def test_the_chapters_are_found():
    assert len(CHAPTERS) == len(("00", "01", "02", "03", "04", "05", "06", "11"))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_every_cell_runs_again_after_run_all(path):
    run_twice(path)
