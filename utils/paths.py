"""Where things live. Every notebook and script finds files through these, never through
its own working directory, so a chapter runs the same from JupyterLab, nbval or a script."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
# Everything the course writes (cached tokenizers, checkpoints, logs) goes under runs/,
# which git ignores. Nothing is ever written into data/ or the source tree.
RUNS_DIR = REPO_ROOT / "runs"


def run_dir(name: str) -> Path:
    """Return runs/<name>/, creating it if needed.

    >>> run_dir("tokenizers").name
    'tokenizers'
    """
    path = RUNS_DIR / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    """Write `text` (UTF-8, "\\n" line ends) to `path` through a temporary file in the same
    folder, so an interrupted run never leaves a half-written file behind.

    >>> import tempfile
    >>> out = write_text_atomic(Path(tempfile.mkdtemp()) / "a.txt", "hi\\n")
    >>> out.read_text()
    'hi\\n'
    """
    import os

    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8", newline="\n")
    os.replace(partial, path)
    return path
