"""api/ modules are the Python twins of the tasks: they compose each other only through public entry
points (an options dataclass, the function that takes it, its outcome), never through helpers, and deploy
and transport never need the emulated fleet."""
from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "edgefleet"


def imports_from(path: Path, prefix: str) -> list[tuple[str, str]]:
    """(module, name) for every `from <prefix>... import name` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names if alias.name.startswith(prefix)]
    return found


def is_entry_point(module: str, name: str) -> bool:
    obj = getattr(importlib.import_module(module), name)
    if inspect.isclass(obj):
        return name.endswith(("Options", "Outcome"))
    if inspect.isfunction(obj):
        first = next(iter(inspect.signature(obj).parameters.values()), None)
        return first is not None and str(first.annotation).endswith("Options")
    return False


@pytest.mark.parametrize("path", sorted((PACKAGE / "api").glob("*.py")), ids=lambda p: p.name)
def test_api_modules_use_each_other_only_through_entry_points(path: Path):
    for module, name in imports_from(path, "edgefleet.api."):
        if module == "edgefleet.api.context":  # the shared Env, not an API
            continue
        assert is_entry_point(module, name), f"{path.name} imports {name} from {module}: not an entry point"


def test_deploy_does_not_import_build():
    assert not [m for m, _ in imports_from(PACKAGE / "api" / "deploy.py", "edgefleet.api.build")]


@pytest.mark.parametrize("layer", ["deploy", "transport"])
def test_deploy_and_transport_do_not_need_the_fleet(layer: str):
    for path in sorted((PACKAGE / layer).glob("*.py")):
        assert not imports_from(path, "edgefleet.fleet"), f"{layer}/{path.name} imports the emulated fleet"
