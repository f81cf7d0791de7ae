"""The house keeps its layers: imports flow ecq -> quantization -> callbacks, relevance beside quantization, export and
reports read trained models, the CLI on top; no import circle. Read from the source, so it runs without TensorFlow."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tf_ecqx"
SHARED = {"tf_ecqx._keras", "tf_ecqx.layers", "tf_ecqx.files"}  # facts and helpers every layer may use


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(module: str, name: str) -> str:
    """`from module import name`: the submodule module.name if there is one, else module."""
    candidate = PACKAGE.parent / f"{module}.{name}".replace(".", "/")
    is_module = candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists()
    return f"{module}.{name}" if is_module else module


def imports_of(path: Path, lazy: bool) -> set[str]:
    """The tf_ecqx modules a file imports: at module level, or (lazy) also inside functions."""
    tree = ast.parse(path.read_text())
    nodes = ast.walk(tree) if lazy else tree.body
    found = set()
    for node in nodes:
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import for type checkers only
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tf_ecqx"):
            found |= {resolve(node.module, alias.name) for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tf_ecqx")}
    return found - {"tf_ecqx"}


GRAPH = {module_name(path): imports_of(path, lazy=True) for path in PACKAGE.rglob("*.py")}
EAGER = {module_name(path): imports_of(path, lazy=False) for path in PACKAGE.rglob("*.py")}


def in_layer(module: str, *prefixes: str) -> bool:
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


@pytest.mark.parametrize(
    ("layer", "allowed"),
    [
        ("tf_ecqx.ecq", ("tf_ecqx.ecq",)),
        ("tf_ecqx.quantization", ("tf_ecqx.ecq", "tf_ecqx.quantization")),
        ("tf_ecqx.relevance", ("tf_ecqx.relevance",)),
        ("tf_ecqx.export", ("tf_ecqx.ecq", "tf_ecqx.quantization", "tf_ecqx.export")),
    ],
)
def test_each_layer_imports_only_what_lies_below_it(layer, allowed):
    wrong = {
        (module, imported)
        for module, imports in GRAPH.items()
        if in_layer(module, layer)
        for imported in imports
        if imported not in SHARED and not in_layer(imported, *allowed)
    }
    assert not wrong, f"imports against the flow: {sorted(wrong)}"


def test_nothing_imports_the_cli():
    assert not [module for module, imports in GRAPH.items() if "tf_ecqx.cli" in imports]


def test_no_import_circle():
    def visit(module: str, path: tuple[str, ...]) -> None:
        if module in path:
            pytest.fail(f"import circle: {' -> '.join((*path[path.index(module) :], module))}")
        for imported in EAGER.get(module, ()):
            visit(imported, (*path, module))

    for module in EAGER:
        visit(module, ())
