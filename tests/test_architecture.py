"""The import graph of tlkit/ stays a ladder: no cycle, counting imports made inside functions too,
so that no lower module reaches up to a later stage (docs/architecture.md draws it)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tlkit"
# The package's face: `tlkit.finetune` is loaded on first use so that `import tlkit` stays cheap.
FACADE = "tlkit"


def _module_name(path: Path) -> str:
    return "tlkit" if path.name == "__init__.py" else f"tlkit.{path.stem}"


def _imports(path: Path) -> set[str]:
    """The tlkit modules a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tlkit"):
            if node.module == "tlkit":  # from tlkit import models, distributed
                found |= {f"tlkit.{alias.name}" for alias in node.names if (PACKAGE / f"{alias.name}.py").is_file()}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tlkit.")}
    return found


def _graph() -> dict[str, set[str]]:
    graph = {_module_name(path): _imports(path) for path in sorted(PACKAGE.glob("*.py"))}
    graph[FACADE] = set()
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


def test_the_import_graph_has_no_cycle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()))


@pytest.mark.parametrize("lower, higher", [
    ("tlkit.backbone", "tlkit.models"), ("tlkit.timm_models", "tlkit.models"), ("tlkit.models", "tlkit.checkpoint"),
    ("tlkit.checkpoint_format", "tlkit.checkpoint"), ("tlkit.train", "tlkit.finetuning"),
    ("tlkit.callbacks", "tlkit.finetuning"), ("tlkit.datasets", "tlkit.models"), ("tlkit.scan", "tlkit.split"),
    ("tlkit.augment", "tlkit.data"), ("tlkit.report", "tlkit.callbacks"), ("tlkit.config", "tlkit.models"),
    ("tlkit.findings", "tlkit.features"), ("tlkit.exclusions", "tlkit.split"), ("tlkit.photopage", "tlkit.evaluate"),
    ("tlkit.auditing", "tlkit.audit_report"),
])
def test_a_lower_stage_never_reaches_a_later_one(lower, higher):
    graph = _graph()
    reached, todo = set(), [lower]
    while todo:
        for target in graph.get(todo.pop(), ()):
            if target not in reached:
                reached.add(target)
                todo.append(target)
    assert higher not in reached


def test_the_check_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
