"""Shared by the end-to-end tests: harness.py (the gateway-plus-upstream fixture) on the path, trio's
MockClock for tests that wait, and a clean environment for the gateway and the CLI they run."""

import sys
from pathlib import Path

import pytest
import trio.testing

# harness.py (the gateway-plus-upstream fixture) sits beside the end-to-end tests.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import SECRET_ENV


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps when every task waits 2 ms of real time (sockets are real)."""
    return trio.testing.MockClock(autojump_threshold=0.002)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI reads os.environ: the master key the gateway used, and nothing that changes routing."""
    monkeypatch.setenv("SWITCHBOARD_SECRET_KEY", SECRET_ENV["SWITCHBOARD_SECRET_KEY"])
    for name in (
        "THREAD_PROTECTION_PLATFORMS",
        "LOCAL_API_KEY",
        "SWITCHBOARD_DATA_DIR",
        "SWITCHBOARD_PORT",
        "SWITCHBOARD_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
