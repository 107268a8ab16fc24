"""The set-up files must agree with each other: one set of pins, reachable chapters."""

import re

from utils.paths import REPO_ROOT


def pins(lines):
    return {line.strip().lstrip("- ").strip() for line in lines
            if re.match(r"^\s*-?\s*[A-Za-z0-9_.-]+==", line)}


def test_environment_yml_pins_match_requirements():
    requirements = pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    conda = pins((REPO_ROOT / "environment.yml").read_text().splitlines())
    assert requirements and requirements == conda


def test_torch_is_pinned_exactly():
    assert "torch==2.13.0" in pins((REPO_ROOT / "requirements.txt").read_text().splitlines())


def test_every_chapter_has_solutions_and_a_readme_row():
    readme = (REPO_ROOT / "README.md").read_text()
    for chapter in sorted((REPO_ROOT / "chapters").glob("*.ipynb")):
        assert (REPO_ROOT / "solutions" / chapter.name).exists(), f"no solutions for {chapter.name}"
        assert chapter.name in readme, f"README's chapter table does not list {chapter.name}"


def test_hosted_requirements_are_requirements_without_torch():
    """A hosted Jupyter keeps its own CUDA torch: the hosted file must never name torch, and
    every pin it has must be requirements.txt's."""
    requirements = pins((REPO_ROOT / "requirements.txt").read_text().splitlines())
    hosted = pins((REPO_ROOT / "requirements-hosted.txt").read_text().splitlines())
    assert hosted and hosted <= requirements
    assert not any(pin.startswith("torch==") for pin in hosted)
    for needed in ("numpy", "matplotlib", "ipywidgets", "transformers"):
        assert any(pin.startswith(needed + "==") for pin in hosted), needed
