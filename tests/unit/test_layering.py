"""The house's layering: dependencies point down only (see DESIGN.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "ops": {"celery", "kombu", "redis", "fastio", "queues", "workers", "monitoring"},
    "fastio": {"celery", "kombu", "ops", "queues", "workers", "monitoring"},
    "queues": {"workers", "ops"},
}


def imported_modules(package: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(path.relative_to(ROOT).as_posix())
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_above_it(package):
    imports = imported_modules(package)
    broken = {name: sorted(imports[name]) for name in FORBIDDEN[package] & imports.keys()}
    assert not broken, f"{package}/ must not import {broken}"


def test_ops_reads_no_environment():
    offenders = [p.name for p in (ROOT / "ops").rglob("*.py") if "os.environ" in p.read_text() or "getenv" in p.read_text()]
    assert offenders == []


def test_front_door_loads_no_imaging_code():
    code = ("import sys, queues, queues.cli, queues.pipelines, queues.app, queues.jobs, queues.api; "
            "bad = [m for m in ('numpy', 'itk', 'pydicom', 'h5py', 'numba', 'ops', 'workers') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
