"""Run a notebook top to bottom, then run every code cell once more in the same kernel.

A reader re-runs cells all the time: after Run All they go back to a plot, change a number,
run it again. That breaks when a later cell rebinds a name an earlier one uses (an exercise
stub called `causal_mask` replacing the library's `causal_mask`), or when a global switch set
late leaks into an early cell's check. This runs the whole notebook, then each code cell again
in order, and reports the first cell that raises, with its source. The second pass skips the
first code cell, the chapter's imports: re-running it would quietly restore every name a later
cell rebound, which is exactly what a reader re-running one cell does not get.

    python -m tests.rerun chapters/06_masking.ipynb [more.ipynb ...]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


class RerunError(AssertionError):
    """A cell raised, on the first pass or on the second."""


def run_twice(path: Path, timeout: int = 900) -> None:
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=False)
    code = [(i, cell) for i, cell in enumerate(notebook.cells) if cell.cell_type == "code"]
    with client.setup_kernel():
        for run, cells in (("the first run", code), ("running it again after Run All", code[1:])):
            for index, cell in cells:
                number = next(n for n, (i, _) in enumerate(code, start=1) if i == index)
                try:
                    client.execute_cell(cell, index)
                except CellExecutionError as error:
                    source = "".join(cell.source)[:600]
                    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no terminal colours
                    raise RerunError(f"{path.name}, code cell {number}, failed on {run}:\n"
                                     f"{source}\n---\n{message[-1500:]}") from None


def main(paths: list[str]) -> int:
    failed = 0
    for name in paths:
        try:
            run_twice(Path(name))
            print(f"{name}: every code cell ran twice")
        except RerunError as error:
            failed += 1
            print(error)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
