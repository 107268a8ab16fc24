"""Run a notebook top to bottom, then run every code cell once more in the same kernel.

A reader re-runs cells all the time: after Run All they go back to a plot, change a number,
run it again. That breaks when a later cell rebinds a name an earlier one uses (an exercise
stub called `causal_mask` replacing the library's `causal_mask`), or when a global switch set
late leaks into an early cell's check. This runs the whole notebook, then each code cell again
in order, and reports the first cell that raises, with its source. The second pass skips the
first code cell, the chapter's imports: re-running it would quietly restore every name a later
cell rebound, which is exactly what a reader re-running one cell does not get.

In the second pass a cell with a GPU branch (`if device.type == "cuda": ...`, which CI's CPU
never takes; not one that only picks bigger numbers there) first runs as if on a GPU: the test
`device.type == "cuda"` reads True and the `torch.cuda` calls a CPU cannot make (synchronize,
memory statistics) do nothing. A cell tagged `gpu-branch-too-slow-on-cpu` (in its metadata)
is left out of this, because its GPU branch does minutes of CPU work (training several models);
tools/gpu_check.py runs it on a real GPU.
The tensors stay on the CPU, so this catches a GPU branch that is broken Python (a name it
never defines, a wrong call, a size that does not fit), not a kernel that only CUDA lacks;
`tools/gpu_check.py` on a real GPU is for that. Then the cell runs as written, so later cells
see the CPU state again.

    python -m tests.rerun chapters/06_masking.ipynb [more.ipynb ...]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


class RerunError(AssertionError):
    """A cell raised, on the first pass or on the second."""


GPU_TEST = 'device.type == "cuda"'
TOO_SLOW_TAG = "gpu-branch-too-slow-on-cpu"

# Run before a cell's GPU branch and undone after it (even when it fails): the torch.cuda calls
# of the chapters' GPU branches, made harmless on a machine without CUDA.
FAKE_CUDA_ON = """
import torch as _torch
_saved_cuda = {name: getattr(_torch.cuda, name) for name in (
    "synchronize", "memory_allocated", "max_memory_allocated", "reset_peak_memory_stats")}
_torch.cuda.synchronize = lambda *args, **kwargs: None
_torch.cuda.reset_peak_memory_stats = lambda *args, **kwargs: None
_torch.cuda.memory_allocated = _torch.cuda.max_memory_allocated = lambda *args, **kwargs: 0
"""
FAKE_CUDA_OFF = """
for _name, _function in _saved_cuda.items():
    setattr(_torch.cuda, _name, _function)
del _saved_cuda, _name, _function, _torch
"""


def takes_a_gpu_branch(source: str) -> bool:
    """Does the cell do something different on a GPU, beyond picking other numbers?

    `n = 600 if device.type == "cuda" else 150` only sizes the work: running it with 600 on a
    CPU proves nothing and costs minutes, so such cells are not run as if on a GPU. Any other
    use of the test (an `if` block, a flag passed on) is.
    """
    if GPU_TEST not in source:
        return False
    try:
        tree = ast.parse(source)
    except SyntaxError:          # IPython syntax (%magic): run it as if on a GPU to be safe
        return True

    gpu_test = ast.parse(GPU_TEST, mode="eval").body

    def is_gpu_test(node: ast.AST) -> bool:
        return isinstance(node, ast.Compare) and ast.dump(node) == ast.dump(gpu_test)

    def literal(node: ast.AST) -> bool:
        try:
            ast.literal_eval(node)
            return True
        except ValueError:
            return False

    sizing = {id(node.test) for node in ast.walk(tree) if isinstance(node, ast.IfExp)
              and is_gpu_test(node.test) and literal(node.body) and literal(node.orelse)}
    return any(is_gpu_test(node) and id(node) not in sizing for node in ast.walk(tree))


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
                    if (run != "the first run" and takes_a_gpu_branch(cell.source)
                            and TOO_SLOW_TAG not in cell.metadata.get("tags", [])):
                        what = "its GPU branch (device.type == 'cuda' taken)"
                        client.execute_cell(nbformat.v4.new_code_cell(FAKE_CUDA_ON), index)
                        try:
                            gpu_cell = nbformat.v4.new_code_cell(cell.source.replace(GPU_TEST,
                                                                                     "True"))
                            client.execute_cell(gpu_cell, index)
                        finally:
                            client.execute_cell(nbformat.v4.new_code_cell(FAKE_CUDA_OFF), index)
                    what = run
                    client.execute_cell(cell, index)
                except CellExecutionError as error:
                    source = "".join(cell.source)[:600]
                    message = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # no terminal colours
                    raise RerunError(f"{path.name}, code cell {number}, failed on {what}:\n"
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
