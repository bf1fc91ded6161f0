"""What the console's browser tests share: the gateway and fault-upstream processes, the models they
serve, where screenshots go (conftest.py holds the fixtures built from these)."""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

from harness import ADMIN_HEADERS, ADMIN_TOKEN, GATEWAY_KEY, SECRET_ENV
from harness import config_text as e2e_config_text

__all__ = ["ADMIN_TOKEN", "GATEWAY_KEY", "SECRET_ENV"]
ROOT = Path(__file__).resolve().parents[2]

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# Each model's id is its behaviour on the fault upstream (scripts/fault_upstream.py): `fail:503` always
# fails, the others answer. Ranks order the fallback chain; the pools give every section of the page rows.
MODELS = [
    ("fail:503", "balanced", 1),
    ("ok", "fast", 2),
    ("gpt-4o-mini", "fast", 3),
    ("echo", "balanced", 4),
    ("deep-thought", "smart", 5),
]
START_S = 30.0


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SWITCHBOARD_CHROMIUM"), "chromium", "chromium-browser"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


def output_dir() -> Path:
    base = os.environ.get("SWITCHBOARD_TEST_OUTPUT")
    folder = (Path(base) if base else ROOT / "test-output") / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Process:
    """A child process whose output is read by a thread (so a chatty child never blocks on a full pipe)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout_s: float) -> str:
        """The rest of the first output line that starts with `prefix`."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                break
            if line.startswith(prefix):
                return line[len(prefix) :].split()[0]
        self.stop()
        raise RuntimeError(f"{self.popen.args!r} never said {prefix!r}; its output:\n{''.join(self.lines)}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=5)
        if self.popen.stdout is not None:
            self.popen.stdout.close()


@dataclass
class Gateway:
    url: str
    data_dir: Path
    process: Process

    def chat(self, model: str, **extra: object) -> httpx.Response:
        """A chat request as a client sends it: the gateway key, not the console's session."""
        return httpx.post(
            f"{self.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {GATEWAY_KEY}"},
            json={"model": model, "messages": [{"role": "user", "content": "hello"}], **extra},
            timeout=20,
        )

    def admin(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, f"{self.url}{path}", headers=ADMIN_HEADERS, timeout=20, **kwargs)


def config_text(upstream_url: str, data_dir: Path) -> str:
    """The e2e harness's gateway config, with the console's models in their pools."""
    text = e2e_config_text(upstream_url, data_dir, [])
    for model, pool, rank in MODELS:
        text += (
            f'\n[[models]]\nplatform = "local"\nid = "{model}"\npool = "{pool}"\nintelligence_rank = {rank}\n'
        )
    return text


# Every form control has a label and every button a name (what a screen reader says for it).
UNNAMED = """() => [
  ...[...document.querySelectorAll("input, select, textarea")]
    .filter((el) => el.type !== "hidden" && !el.labels.length && !el.getAttribute("aria-label")),
  ...[...document.querySelectorAll("button")]
    .filter((el) => !el.textContent.trim() && !el.getAttribute("aria-label")),
].map((el) => el.outerHTML.slice(0, 120))"""


def shot(page: object, name: str) -> None:
    """A screenshot of the page as it is now, after checking that all its controls are named."""
    from playwright.sync_api import Page

    assert isinstance(page, Page)
    assert page.evaluate(UNNAMED) == [], f"unnamed controls on {name}"
    page.screenshot(path=str(output_dir() / f"{name}.png"), full_page=True)
