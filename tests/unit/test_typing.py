"""The package type-checks under ``mypy --strict`` (STYLE.md: "Types everywhere")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_pipeline_passes_mypy_strict() -> None:
    # From the repo root so pyproject.toml's [tool.mypy] (pydantic plugin) applies;
    # .mypy_cache keeps repeat runs to a second or two.
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "pipeline"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=90,
    )
    assert result.returncode == 0, f"mypy --strict pipeline failed:\n{result.stdout}{result.stderr}"
