"""Run notebooks' code cells in an IPython shell, without Jupyter, and report time per notebook.

    python tools/run_headless.py chapters/*.ipynb

For machines that have PyTorch but no Jupyter server (e.g. a rented GPU box): it checks that
every chapter runs top to bottom there *unchanged*, on whatever device `get_device()` picks.
Figures go to matplotlib's Agg backend and widgets are built but not shown. Exit status 1 if
any cell raised.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402


@dataclass
class NotebookRun:
    """What running one notebook headless gave: ok, seconds, and the failing cell if any."""

    path: Path
    ok: bool
    seconds: float
    failed_cell: int | None = None   # index among the code cells, from 0
    error: str = ""
    printed: str = ""                # the failing cell's last output, to see why


def run_notebook(path: Path) -> NotebookRun:
    """Run every code cell of `path` in a fresh IPython shell, in the notebook's folder."""
    notebook = json.loads(path.read_text(encoding="utf-8"))  # plain JSON: no nbformat needed
    shell = InteractiveShell()  # a fresh namespace per notebook, like a fresh kernel
    here = Path.cwd()
    start = time.perf_counter()
    os.chdir(path.resolve().parent)
    try:
        code = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
        for index, cell in enumerate(code):
            printed = io.StringIO()  # keep the cells' own output out of the report
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
                result = shell.run_cell("".join(cell["source"]), silent=True)
            if not result.success:
                error = result.error_in_exec or result.error_before_exec
                return NotebookRun(path, False, time.perf_counter() - start, index, repr(error),
                                   printed.getvalue()[-3000:])
        return NotebookRun(path, True, time.perf_counter() - start)
    finally:
        os.chdir(here)


def run(path: Path) -> bool:
    outcome = run_notebook(path)
    if outcome.ok:
        print(f"{path.name}: ok in {outcome.seconds:.1f} s")
    else:
        print(outcome.printed)
        print(f"{path.name}: code cell {outcome.failed_cell} failed: {outcome.error}")
    return outcome.ok


def main(paths: list[str]) -> int:
    ok = True
    for name in paths:
        ok &= run(Path.cwd() / name)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
