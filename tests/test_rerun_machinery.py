"""The chapter re-run test's own machinery (tests/rerun.py) can fail: a cell that breaks on its
second run, and a GPU branch that breaks while CPU runs pass, are both reported."""

import nbformat
import pytest

from tests.rerun import RerunError, run_twice, takes_a_gpu_branch


@pytest.mark.parametrize("source, expected", [
    ('steps = 600 if device.type == "cuda" else 150', False),              # sizes only
    ('lens = [1] + ([8192] if device.type == "cuda" else [])', False),
    ('B, T = (16, 256) if device.type == "cuda" else (4, 32)', False),
    ('if device.type == "cuda":\n    torch.cuda.synchronize()', True),
    ('run_compile = device.type == "cuda"', True),                           # a flag passed on
    ('x = f(a) if device.type == "cuda" else 1', True),                       # calls something
    ('x = 1', False),
])
def test_which_cells_run_as_if_on_a_gpu(source, expected):
    assert takes_a_gpu_branch(source) is expected


def notebook(tmp_path, *sources):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(s) for s in sources]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    return path


SETUP = "import torch\ndevice = torch.device('cpu')\ntotal = 0"


def test_a_sound_notebook_passes(tmp_path):
    gpu_cell = 'if device.type == "cuda":\n    torch.cuda.synchronize()\ntotal += 1'
    run_twice(notebook(tmp_path, SETUP, gpu_cell))


def test_a_broken_gpu_branch_is_reported(tmp_path):
    broken = 'if device.type == "cuda":\n    size = undefined_name\nprint("ok")'
    with pytest.raises(RerunError, match="GPU branch"):
        run_twice(notebook(tmp_path, SETUP, broken))


def test_a_cell_that_fails_when_run_again_is_reported(tmp_path):
    once = "del device"   # the second run finds no `device`
    with pytest.raises(RerunError, match="running it again"):
        run_twice(notebook(tmp_path, SETUP, "x = device", once))


def test_the_cuda_functions_are_restored_after_a_gpu_branch(tmp_path):
    fails = 'if device.type == "cuda":\n    raise RuntimeError("boom")'
    check = ("import torch\nassert torch.cuda.synchronize.__module__ == 'torch.cuda', "
             "torch.cuda.synchronize")
    with pytest.raises(RerunError, match="boom"):
        run_twice(notebook(tmp_path, SETUP, check, fails))
    # a kernel is per run: check in a fresh one that a passing GPU branch restores them too
    run_twice(notebook(tmp_path, SETUP, 'if device.type == "cuda":\n    pass', check))


def test_a_cell_tagged_too_slow_is_not_run_as_if_on_a_gpu(tmp_path):
    path = notebook(tmp_path, SETUP, 'if device.type == "cuda":\n    size = undefined_name')
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].metadata["tags"] = ["gpu-branch-too-slow-on-cpu"]
    nbformat.write(nb, path)
    run_twice(path)
