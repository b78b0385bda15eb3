"""`gateway/scheduler/` imports only the standard library (minus clocks, I/O and global RNG)
and itself, so the same objects run under real and virtual time."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import gateway.scheduler

PACKAGE = Path(gateway.scheduler.__file__).parent
BANNED = {
    "asyncio", "time", "random", "threading", "multiprocessing", "socket", "select", "selectors",
    "subprocess", "os", "io", "datetime", "signal", "logging", "concurrent", "http", "urllib",
}  # fmt: skip


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: use absolute imports"
            names.append(node.module or "")
    return names


def test_scheduler_imports_only_the_standard_library_and_itself() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 5
    for path in files:
        for name in _imports(path):
            top = name.split(".")[0]
            if name == "gateway.scheduler" or name.startswith("gateway.scheduler."):
                continue
            assert top in sys.stdlib_module_names or top == "__future__", f"{path}: {name}"
            assert top not in BANNED, f"{path} imports {name}: the scheduler must stay pure"


def test_the_ban_catches_a_clock(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom gateway.placement import PDPair\n")
    assert _imports(bad) == ["time", "gateway.placement"]
