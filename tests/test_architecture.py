"""The import graph of tlkit/ stays a ladder: no cycle, counting imports made inside functions too and
those that go through the package face (tlkit/__init__.py), so that no lower module reaches up to a later
stage, nor to the API at the top (docs/architecture.md draws it)."""

import ast
import functools
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlkit"
# The package's face: `tlkit.finetune` is loaded on first use (from tlkit.api) so that `import tlkit` stays cheap;
# `from tlkit import __version__` goes through it, and so, on first use of an API name, to every stage.
FACADE = "tlkit"
# The top of the ladder: the face, the API it re-exports and the command line. No stage reaches them.
TOP = {FACADE, "tlkit.api", "tlkit.cli", "tlkit.__main__"}


def _module_name(path: Path) -> str:
    return "tlkit" if path.name == "__init__.py" else f"tlkit.{path.stem}"


def _imports(source: str, *, top_level_only: bool = False) -> set[str]:
    """The tlkit modules a file imports, at the top or inside a function (top_level_only: at the top alone).
    A name taken from the package that is no module of it (`from tlkit import __version__`) is the face's."""
    found = set()
    nodes = ast.parse(source).body if top_level_only else ast.walk(ast.parse(source))
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlkit"):
            if node.module == "tlkit":  # from tlkit import models, distributed; or __version__ (the face's)
                found |= {f"tlkit.{alias.name}" if (PACKAGE / f"{alias.name}.py").is_file() else FACADE
                          for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tlkit.")}
    return found


@functools.cache  # parsed once for every test here (none changes it)
def _graph() -> dict[str, set[str]]:
    graph = {_module_name(path): _imports(path.read_text(encoding="utf-8")) for path in sorted(PACKAGE.glob("*.py"))}
    return {module: {target for target in targets if target != module} for module, targets in graph.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules, or None."""
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> list[str] | None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target] if target in path else [module, target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (found := visit(module, [module])):
            return found
    return None


def _reached(graph: dict[str, set[str]], start: str) -> set[str]:
    reached, todo = set(), [start]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    return reached


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


@pytest.mark.parametrize("lower, higher", [
    ("tlkit.backbone", "tlkit.models"), ("tlkit.timm_models", "tlkit.models"), ("tlkit.models", "tlkit.checkpoint"),
    ("tlkit.checkpoint_format", "tlkit.checkpoint"), ("tlkit.train", "tlkit.finetuning"),
    ("tlkit.callbacks", "tlkit.finetuning"), ("tlkit.datasets", "tlkit.models"), ("tlkit.scan", "tlkit.split"),
    ("tlkit.augment", "tlkit.data"), ("tlkit.report", "tlkit.callbacks"), ("tlkit.config", "tlkit.models"),
    ("tlkit.findings", "tlkit.features"), ("tlkit.exclusions", "tlkit.split"), ("tlkit.photopage", "tlkit.evaluate"),
    ("tlkit.auditing", "tlkit.audit_report"), ("tlkit.auditing", "tlkit.finetuning"),
    ("tlkit.run_backbone", "tlkit.finetuning"),
])
def test_a_lower_stage_never_reaches_a_later_one(lower, higher):
    assert higher not in _reached(_graph(), lower)


@pytest.mark.parametrize("module", sorted(set(_graph()) - TOP))
def test_no_stage_reaches_the_api_or_the_face(module):
    """The face loads the API, which loads nearly every stage: a stage that imported through it (for the
    version, say) would reach up to the top of the ladder."""
    assert not _reached(_graph(), module) & TOP


def test_what_the_face_imports_at_once_is_a_leaf():
    """Every `import tlkit.x` runs tlkit/__init__.py first, so what it imports at its top is imported by every
    stage: those modules import no other of tlkit's."""
    graph = _graph()
    eager = _imports((PACKAGE / "__init__.py").read_text(encoding="utf-8"), top_level_only=True)
    assert eager and all(not graph[module] for module in eager), {module: graph[module] for module in eager}


def test_an_import_through_the_face_is_seen():
    assert _imports("from tlkit import __version__, models") == {FACADE, "tlkit.models"}
    assert _imports("def late():\n    from tlkit import api\n", top_level_only=True) == set()


def test_the_check_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
