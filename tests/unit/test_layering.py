"""The house's layering: dependencies point down only (see DESIGN.md). No module is exempt."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"carina", "queues", "monitoring", "workers", "ops", "fastio"}
# Who may import whom, of our packages (each may import itself); third-party bans beside it.
MAY_IMPORT = {
    "carina": OURS,
    "workers": {"workers", "ops", "fastio", "queues", "monitoring"},
    "monitoring": {"monitoring", "queues", "fastio"},
    "queues": {"queues", "fastio"},
    "ops": {"ops"},
    "fastio": {"fastio"},
}
THIRD_PARTY_BANNED = {
    "ops": {"celery", "kombu", "redis"},
    "fastio": {"celery", "kombu"},
}
IMAGING = ("numpy", "itk", "pydicom", "h5py", "numba", "scipy", "tritonclient", "ops", "workers")


def imported_modules(package: str) -> dict[str, set[str]]:
    """Top-level names imported anywhere in ``package`` → the files that import them."""
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


def test_the_matrix_names_every_package():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "bench", "models"}
    assert packages == set(MAY_IMPORT)


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_package_imports_nothing_above_it(package):
    imports = imported_modules(package)
    forbidden = (OURS - MAY_IMPORT[package]) | THIRD_PARTY_BANNED.get(package, set())
    broken = {name: sorted(imports[name]) for name in forbidden & imports.keys()}
    assert not broken, f"{package}/ must not import {broken}"


def test_ops_reads_no_environment():
    offenders = [p.name for p in (ROOT / "ops").rglob("*.py") if "os.environ" in p.read_text() or "getenv" in p.read_text()]
    assert offenders == []


def reads_a_carina_variable(tree: ast.AST) -> bool:
    """``os.environ.get("CARINA_…")``, ``os.getenv("CARINA_…")`` or ``os.environ["CARINA_…"]`` read."""
    def carina_name(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("CARINA_")

    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "getenv")
                and node.args and carina_name(node.args[0])):
            return True
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and carina_name(node.slice):
            return True
    return False


def test_only_the_settings_object_reads_carina_settings_from_the_environment():
    readers = sorted(p.relative_to(ROOT).as_posix() for package in MAY_IMPORT for p in (ROOT / package).rglob("*.py")
                     if reads_a_carina_variable(ast.parse(p.read_text())))
    assert readers == []


def modules_of(*packages: str) -> list[str]:
    names = []
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__main__":
                continue
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_front_door_monitoring_and_cli_load_no_imaging_code():
    # carina.demo may: it drains the FastIO pool at the end of the tour.
    modules = [m for m in modules_of("queues", "monitoring", "carina") if m not in ("monitoring.flowerconfig", "carina.demo")]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            f"print([m for m in {IMAGING!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
