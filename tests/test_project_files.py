"""The set-up files must agree with each other: one set of pins, reachable chapters."""

import ast
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


# --------------------------------------------------------------------------- library shape
# utils/ is what a reader studies line by line, so two rules hold for it (issue #17): no module
# imports one that imports it back, even lazily inside a function, and no module outside
# checks/ and widgets/ is longer than about a chapter's worth of reading.
MAX_MODULE_LINES = 450


def module_name(path, root):
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root):
    """{module: modules of the package it imports}, counting imports at any depth."""
    files = {module_name(p, root): p for p in sorted((root / "utils").rglob("*.py"))}
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from utils import x` imports the module utils.x when there is one
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t not in (name, "utils")}
    return graph


def find_cycle(graph):
    """One import cycle as a list [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def long_modules(root, limit=MAX_MODULE_LINES):
    return {module_name(p, root): n for p in (root / "utils").rglob("*.py")
            if p.relative_to(root / "utils").parts[0] not in ("checks", "widgets")
            and (n := len(p.read_text(encoding="utf-8").splitlines())) > limit}


def test_utils_has_no_import_cycle():
    cycle = find_cycle(import_graph(REPO_ROOT))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_library_module_is_longer_than_the_limit():
    assert long_modules(REPO_ROOT) == {}, f"split these (over {MAX_MODULE_LINES} lines)"


def test_the_shape_checks_can_fail(tmp_path):
    (tmp_path / "utils" / "checks").mkdir(parents=True)
    (tmp_path / "utils" / "__init__.py").write_text("")
    (tmp_path / "utils" / "a.py").write_text("import torch\nfrom utils.b import f\n")
    # a lazy import inside a function still ties the two modules together
    (tmp_path / "utils" / "b.py").write_text("def f():\n    from utils import a\n    return a\n")
    (tmp_path / "utils" / "c.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    (tmp_path / "utils" / "checks" / "big.py").write_text("x = 1\n" * (MAX_MODULE_LINES + 1))
    graph = import_graph(tmp_path)
    assert graph["utils.a"] == {"utils.b"} and graph["utils.b"] == {"utils.a"}
    assert find_cycle(graph) == ["utils.a", "utils.b", "utils.a"]
    assert long_modules(tmp_path) == {"utils.c": MAX_MODULE_LINES + 1}   # checks/ is exempt
    (tmp_path / "utils" / "b.py").write_text("def f():\n    return 1\n")
    assert find_cycle(import_graph(tmp_path)) is None
