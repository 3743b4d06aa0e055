"""The import rules of docs/architecture.md, read from the code itself.

Each part of the project may import only the parts listed for it; the
command line (hub.cli) is the one place that wires every plane together.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: part -> the project parts it may import (besides itself). The longest
#: matching prefix names a module's part.
MAY_IMPORT: dict[str, set[str]] = {
    "hub.config": {"hub.core"},  # Settings.keys() opens the signing-key file (hub.core.tokens)
    "hub.media": set(),
    "hub.core": {"hub.media"},
    "hub.monitoring": {"hub.core", "hub.media"},
    "hub.workflows": {"hub.core", "hub.media", "hub.config"},
    "recorder": {"hub.core", "hub.media"},
    "signaling": {"hub.config", "hub.core", "hub.media", "hub.monitoring", "hub.workflows", "recorder"},
    "client": {"hub.media"},
    "hub.cli": {"hub", "signaling", "recorder", "client"},
    "hub": {"hub.cli"},  # hub/__init__.py and hub/__main__.py
}
PROJECT = ("hub", "signaling", "recorder", "client")


def part_of(module: str) -> str | None:
    matches = [p for p in MAY_IMPORT if module == p or module.startswith(p + ".")]
    return max(matches, key=len) if matches else None


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in a file, nested ones too."""
    tree = ast.parse(path.read_text(), str(path))
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append((node.lineno, ".".join(base + ([node.module] if node.module else []))))
            elif node.module:
                found.append((node.lineno, node.module))
    return found


def violations(root: Path = ROOT) -> list[str]:
    out = []
    for top in PROJECT:
        for path in sorted((root / top).rglob("*.py")):
            own = part_of(module_name(path, root))
            assert own is not None, f"{path} belongs to no part of MAY_IMPORT"
            for line, target in imports(path, root):
                if target.split(".")[0] not in PROJECT:
                    continue  # the standard library and third-party packages
                theirs = part_of(target)
                allowed = MAY_IMPORT[own]
                if theirs == own or theirs in allowed or any(theirs and theirs.startswith(a + ".") for a in allowed):
                    continue
                if own == "hub.cli" or (theirs is not None and theirs.startswith(own + ".")):
                    continue
                out.append(f"{path.relative_to(root)}:{line}: {own} may not import {target} ({theirs})")
    return out


def test_every_import_follows_the_rules() -> None:
    assert violations() == []


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    """The check itself: a copy of the tree with media importing the rooms fails it."""
    for top in PROJECT:
        for path in (ROOT / top).rglob("*.py"):
            target = tmp_path / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(path.read_text())
    forward = tmp_path / "hub" / "media" / "forward.py"
    forward.write_text("from hub.core.rooms import Rooms\n" + forward.read_text())
    recorder = tmp_path / "recorder" / "service.py"
    recorder.write_text("import signaling.app\n" + recorder.read_text())
    assert [v.split(": ", 1)[1] for v in violations(tmp_path)] == [
        "hub.media may not import hub.core.rooms (hub.core)",
        "recorder may not import signaling.app (signaling)",
    ]
