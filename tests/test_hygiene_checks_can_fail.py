"""The hygiene rules must be able to fail: feed them broken notebooks."""

import json

import pytest

from tests.test_notebook_hygiene import TestHygiene


def write(tmp_path, cells, metadata=None):
    nb = {"cells": cells, "metadata": metadata if metadata is not None else
          {"kernelspec": {"name": "python3"}}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    return path


def code(count, outputs=()):
    return {"cell_type": "code", "execution_count": count, "outputs": list(outputs),
            "metadata": {}, "source": ""}


def test_out_of_order_counts_fail(tmp_path):
    with pytest.raises(AssertionError):
        TestHygiene().test_outputs_from_a_clean_run(write(tmp_path, [code(2), code(1)]))


def test_error_output_fails(tmp_path):
    path = write(tmp_path, [code(1, [{"output_type": "error", "ename": "ValueError"}])])
    with pytest.raises(AssertionError):
        TestHygiene().test_no_error_outputs(path)


def test_machine_path_fails(tmp_path):
    out = {"output_type": "stream", "name": "stdout", "text": ["saved to /home/alice/x.pt"]}
    with pytest.raises(AssertionError):
        TestHygiene().test_no_machine_paths(write(tmp_path, [code(1, [out])]))


def test_missing_kernelspec_fails(tmp_path):
    with pytest.raises(AssertionError):
        TestHygiene().test_kernelspec_set(write(tmp_path, [code(1)], metadata={}))


def test_widget_metadata_without_state_fails(tmp_path):
    meta = {"kernelspec": {"name": "python3"},
            "widgets": {"application/vnd.jupyter.widget-state+json": {"version_major": 2}}}
    with pytest.raises(AssertionError):
        TestHygiene().test_widget_metadata_renderable(write(tmp_path, [code(1)], metadata=meta))
