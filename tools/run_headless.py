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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from IPython.core.interactiveshell import InteractiveShell  # noqa: E402


def run(path: Path) -> bool:
    notebook = json.loads(path.read_text(encoding="utf-8"))  # plain JSON: no nbformat needed
    shell = InteractiveShell()  # a fresh namespace per notebook, like a fresh kernel
    start = time.perf_counter()
    os.chdir(path.resolve().parent)
    for index, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        printed = io.StringIO()  # keep the cells' own output out of the report, unless one fails
        with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
            result = shell.run_cell(source, silent=True)
        if not result.success:
            print(printed.getvalue()[-3000:])
            error = result.error_in_exec or result.error_before_exec
            print(f"{path.name}: code cell {index} failed: {error!r}")
            return False
    print(f"{path.name}: ok in {time.perf_counter() - start:.1f} s")
    return True


def main(paths: list[str]) -> int:
    here = Path.cwd()
    ok = True
    for name in paths:
        ok &= run(here / name)
        os.chdir(here)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
