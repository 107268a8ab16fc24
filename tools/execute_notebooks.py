"""Re-execute notebooks in place, top to bottom in a fresh kernel, so their stored outputs
are always those of a clean run (execution counts 1..n, no stale cells).

    python tools/execute_notebooks.py chapters/00_introduction.ipynb [more.ipynb ...]

Each notebook runs with its own folder as the working directory, exactly as JupyterLab would
run it. Widget state is not stored (`store_widget_state=False`): stored widget views fall back
to text on GitHub, and every widget cell also draws a static figure of its default state.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}


def execute(path: Path, timeout: int = 600) -> float:
    notebook = nbformat.read(path, as_version=4)
    notebook.metadata["kernelspec"] = KERNELSPEC
    notebook.metadata.pop("widgets", None)
    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}},
                            store_widget_state=False)
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    for cell in notebook.cells:  # per-cell timing metadata only adds noise to diffs
        cell.metadata.pop("execution", None)
    nbformat.write(notebook, path)
    return seconds


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    for name in paths:
        seconds = execute(Path(name))
        print(f"{name}: executed in {seconds:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
