"""ruff and mypy, as pyproject.toml configures them, find nothing to report in the repository.

Both run as the project's tools run from the repository root; mypy keeps its cache in the
(ignored) .mypy_cache there, so that runs after the first take a second or two.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Every conftest.py below tests/ is, for pytest, the module ``conftest``: mypy checks the
# nested ones one run each (pyproject.toml leaves them out of the run over the whole project).
NESTED_CONFTESTS = sorted(
    path.relative_to(ROOT) for path in (ROOT / "tests").glob("*/**/conftest.py")
    if "build" not in path.parts)


def run_module(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in the repository root, with this interpreter; skips the test
    when the tool is not installed (it comes with the project's ``test`` extra)."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed in this environment (pip install -e '.[test]')")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, text=True,
                          capture_output=True, timeout=240)


def report(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {result.returncode}\n{result.stdout}{result.stderr}"


def test_ruff_finds_nothing() -> None:
    result = run_module("ruff", "check", str(ROOT))
    assert result.returncode == 0, report(result)


def test_mypy_finds_nothing() -> None:
    result = run_module("mypy")
    assert result.returncode == 0, report(result)


@pytest.mark.parametrize("conftest", NESTED_CONFTESTS, ids=lambda path: str(path.parent))
def test_mypy_finds_nothing_in_a_nested_conftest(conftest: Path) -> None:
    result = run_module("mypy", str(conftest))
    assert result.returncode == 0, report(result)
