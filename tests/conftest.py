import contextlib
import io
import signal
import subprocess
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def call_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """What ``python -m trustlab ARGS`` does (``sys.exit(main(ARGS))``), in this process, with ``env`` added.

    A subprocess pays torch's and diffusers' imports (seconds) on every call, and the command line
    itself is the same code. Tests of what needs a process of its own (a signal's exit code,
    torchrun) start ``python -m trustlab`` themselves. An exception that escapes ``main`` becomes
    exit 1 and a traceback on stderr, as in a subprocess; the SIGTERM handler ``main`` installs is
    taken back afterwards.
    """
    out, err = io.StringIO(), io.StringIO()
    handler = signal.getsignal(signal.SIGTERM)
    from trustlab.cli import main

    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        try:
            code = main(list(args))
        except SystemExit as e:  # as the interpreter reads it: None is 0, a message is 1
            code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        except Exception:
            traceback.print_exc()
            code = 1
    signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(["trustlab", *args], code, out.getvalue(), err.getvalue())


@pytest.fixture
def cli():
    return call_cli


@pytest.fixture
def tmp_data(tmp_path, monkeypatch):
    """An empty TRUSTLAB_DATA for tests that must not touch the real cache."""
    monkeypatch.setenv("TRUSTLAB_DATA", str(tmp_path / "data"))
    return tmp_path / "data"
