"""Running the course in a hosted Jupyter (Google Colab, Kaggle) that brings its own PyTorch.

Those platforms come with a CUDA build of torch matched to their GPUs. Installing the course's
`requirements.txt` there would replace it with the pinned CPU build, so a hosted install uses
`requirements-hosted.txt` (the same pins, without torch and without JupyterLab or the test
tools) and `pip install --no-deps -e .`. Each chapter's first cell says so when `utils` cannot
be imported, then calls `enable_widgets()`.
"""

from __future__ import annotations

import importlib.util


def platform() -> str:
    """'colab', 'kaggle' or 'jupyter' (anything else: JupyterLab, VS Code, a script)."""
    if importlib.util.find_spec("google") is not None and \
            importlib.util.find_spec("google.colab") is not None:
        return "colab"
    import os
    if "KAGGLE_KERNEL_RUN_TYPE" in os.environ:
        return "kaggle"
    return "jupyter"


def enable_widgets() -> str:
    """Switch on the platform's support for ipywidgets where it needs a call; say what was done.

    Colab draws only its own widgets unless its custom widget manager is enabled; JupyterLab and
    Kaggle's notebooks render ipywidgets 8 as they are.
    """
    where = platform()
    if where == "colab":
        from google.colab import output  # only importable on Colab

        output.enable_custom_widget_manager()
        return "colab: custom widget manager enabled"
    return f"{where}: widgets need no setup"
