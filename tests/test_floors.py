"""The floors of ARCHITECTURE.md, checked: no run-time import in gateway/ points up a floor;
and its module lines, checked both ways: every module has one, every one names a module.

Imports made for type checking only (`if TYPE_CHECKING:`) are not counted: they cost
nothing at run time and make no cycle. Each module's floor is that of the longest prefix
of its dotted name listed in FLOORS; a module missing from it fails the test, so a new
module gets a floor when it is added.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "gateway"

# Bottom to top, as ARCHITECTURE.md lists them.
FLOORS: tuple[tuple[str, ...], ...] = (
    ("gateway", "gateway.errors", "gateway.log", "gateway.typedefs", "gateway.record",
     "gateway.endpoints"),
    ("gateway.config",),
    ("gateway.metrics",),
    ("gateway.engine", "gateway.routing", "gateway.translate"),
    ("gateway.runtimes",),
    ("gateway.workers",),
    ("gateway.limits", "gateway.conversations"),
    ("gateway.dispatch",),
    ("gateway.relay",),
    ("gateway.tracing",),
    ("gateway.state",),
    ("gateway.health", "gateway.reload", "gateway.discovery"),
    ("gateway.api", "gateway.console"),
    ("gateway.app",),
    ("gateway.server", "gateway.cli", "gateway.__main__"),
)
FLOOR_OF = {name: index for index, names in enumerate(FLOORS) for name in names}


def floor(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        found = FLOOR_OF.get(".".join(parts[:end]))
        if found is not None:
            return found
    raise AssertionError(f"{module} has no floor in FLOORS (and none in ARCHITECTURE.md)")


def module_of(path: Path) -> tuple[str, str]:
    """(the module's dotted name, the package its relative imports start from)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def runtime_imports(path: Path, package: str):
    tree = ast.parse(path.read_text())

    def walk(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[:len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("gateway"):
                    if child.module is None:   # from . import name: each name may be a module
                        yield from (f"{target}.{alias.name}" for alias in child.names)
                    else:
                        yield target
            elif isinstance(child, ast.Import):
                yield from (a.name for a in child.names if a.name.startswith("gateway"))
            yield from walk(child)
    yield from walk(tree)


def test_no_import_points_up_a_floor():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module, package = module_of(path)
        mine = floor(module)
        for target in runtime_imports(path, package):
            if floor(target) > mine:
                upward.append(f"{module} (floor {mine}) imports {target} (floor {floor(target)})")
    assert upward == []


def test_the_top_level_holds_at_most_twelve_modules():
    assert len(list(PACKAGE.glob("*.py"))) <= 12


def test_every_module_has_its_line_in_architecture_md():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "static" in path.parts:
            continue
        rel = path.relative_to(PACKAGE)
        name = rel.name if len(rel.parts) == 1 else str(rel.relative_to(rel.parts[0]))
        if f"| `{name}` |" not in text:
            missing.append(str(rel))
    assert missing == []


def test_every_module_line_in_architecture_md_names_a_module_that_exists():
    section = None
    gone = []
    for line in (PACKAGE.parent / "ARCHITECTURE.md").read_text().splitlines():
        heading = re.match(r"## `gateway/([a-z_/]*)`", line)
        if heading or line.startswith("## "):
            section = heading.group(1) if heading else None
            continue
        row = re.match(r"\| `([a-z_]+\.py)` \|", line)
        if row and section is not None and not (PACKAGE / section / row.group(1)).exists():
            gone.append(f"gateway/{section}{row.group(1)}")
    assert gone == []
