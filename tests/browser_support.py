"""What the browser tests share: the real app in a subprocess, Debian's Chromium, screenshots.

The app runs in local mode with its own local stack, in a data directory outside pytest's
temporary root (a second pytest session resets that root to 0700, which would lock the
embedded Postgres, an unprivileged user under root, out of its data).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}
START_TIMEOUT_S = 90.0


@dataclass
class RunningApp:
    url: str
    data_dir: Path
    token: str
    log_path: Path

    @property
    def delta_table(self) -> Path:
        return self.delta_path("main.default.products")

    def delta_path(self, table: str) -> Path:
        """Where the local stack keeps a Delta table, by its catalog.schema.table name."""
        return self.data_dir.joinpath("local-stack", "tables", *table.split("."))


def postgres(app: RunningApp) -> Any:
    """A connection to the local Postgres the lakebase writer writes, as its details name it."""
    import psycopg

    writers = httpx.get(f"{app.url}/api/v1/writers", timeout=30).json()
    details = next(w for w in writers if w["name"] == "lakebase")["details"]
    return psycopg.connect(
        host=details["host"],
        port=details["port"],
        dbname=details["database"],
        user=details["user"],
        password=app.token,
        connect_timeout=10,
    )


def js_integer(value: float) -> str:
    """A number as the UI's Intl.NumberFormat("en-US", {maximumFractionDigits: 0}) shows it:
    halves round away from zero (Python's round() rounds them to even)."""
    return f"{int(Decimal(value).quantize(Decimal(1), rounding=ROUND_HALF_UP)):,}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def wait_for(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, deadline: float
) -> httpx.Response:
    last = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log_tail(log_path)}")
        try:
            resp = httpx.get(url, timeout=10)
            if resp.status_code == 200:
                return resp
            last = f"HTTP {resp.status_code}: {resp.text[:300]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.25)
    pytest.fail(f"{url} did not answer 200 in time ({last}):\n{log_tail(log_path)}")


@contextlib.contextmanager
def running_app(name: str, extra_env: dict[str, str] | None = None) -> Iterator[RunningApp]:
    """`uvicorn main:app` in local mode on a free loopback port, stopped with SIGTERM; its
    log is kept as test-artifacts/<name>-app.log. `extra_env` adds to its environment."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"dwbench-{name}-"))
    log_path = data_dir / "app.log"
    port = free_port()
    token = secrets.token_urlsafe(16)  # the local stack's token is also the Postgres password
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "PG"))}
    env.pop("LOCAL_STACK_URL", None)
    env.update(APP_MODE="local", DATA_DIR=str(data_dir), LOCAL_STACK_TOKEN=token)
    env.update(extra_env or {})
    command = [sys.executable, "-m", "uvicorn", "main:app", "--host", "127.0.0.1"]
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        wait_for(proc, f"{url}/health", log_path, deadline)
        wait_for(proc, f"{url}/api/v1/writers", log_path, deadline)
        yield RunningApp(url=url, data_dir=data_dir, token=token, log_path=log_path)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=45)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        ARTIFACTS.mkdir(exist_ok=True)
        if log_path.exists():
            shutil.copyfile(log_path, ARTIFACTS / f"{name}-app.log")
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """Debian's Chromium through Playwright; fails (never skips) when it is not installed."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package (apt-get install "
            "chromium); these tests drive that browser and never download one"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def watched_pages(browser: Any) -> Iterator[Callable[[dict[str, int]], Any]]:
    """New pages, each in a fresh context at a viewport size, all watched: a script error, a
    console error or a failed request outside the API (whose 4xx answers the pages show)
    fails the test when the block ends."""
    contexts: list[Any] = []
    problems: list[str] = []

    def on_console(msg: Any) -> None:
        # The browser logs every 4xx API answer (the page shows those); other errors count.
        if msg.type == "error" and not msg.text.startswith("Failed to load resource"):
            problems.append(f"console {msg.type}: {msg.text}")

    def on_response(resp: Any) -> None:
        if resp.status >= 400 and "/api/" not in resp.url:
            problems.append(f"{resp.status} {resp.url}")

    def new_page(viewport: dict[str, int]) -> Any:
        context = browser.new_context(viewport=viewport)
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("console", on_console)
        page.on("response", on_response)
        return page

    yield new_page
    for context in contexts:
        context.close()
    assert not problems, problems


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
