import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run ``python -m trustlab ARGS`` in a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "trustlab", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """An empty TRUSTLAB_DATA for tests that must not touch the real cache."""
    monkeypatch.setenv("TRUSTLAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
