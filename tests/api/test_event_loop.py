"""The app keeps its event loop free: no thread-pool hops, no collector walking start-up.

FastAPI runs a plain `def` handler or dependency in its thread pool: each one is a thread
hop that sends the request to the back of the loop's queue. Under concurrent load that
queueing was most of the time the app added to a write (5.5 ms of 6 at p50 with 8
clients, `bench.app_bench`), so none may creep back in.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.routing import BaseRoute

from dwbench.settings import Settings
from main import create_app

ROOT = Path(__file__).resolve().parents[2]


def _runs_on_the_loop(call: object) -> bool:
    if inspect.iscoroutinefunction(call):
        return True
    # A class is constructed in the thread pool; a callable object is async by its __call__.
    return not inspect.isclass(call) and inspect.iscoroutinefunction(type(call).__call__)


def _sync_calls(dependant: Dependant, where: str) -> list[str]:
    found = []
    if dependant.call is not None and not _runs_on_the_loop(dependant.call):
        found.append(f"{where}: {getattr(dependant.call, '__qualname__', dependant.call)}")
    for sub in dependant.dependencies:
        found.extend(_sync_calls(sub, where))
    return found


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute | APIWebSocketRoute]:
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            yield route
        # FastAPI keeps an included router as one entry that holds the original router.
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)


def test_no_handler_or_dependency_runs_in_the_thread_pool(tmp_path: Path) -> None:
    app = create_app(Settings(app_mode="local", data_dir=tmp_path))
    routes = list(_api_routes(app.routes))
    assert len(routes) > 10, "the app's routes were not found"
    offenders = []
    for route in routes:
        offenders.extend(_sync_calls(route.dependant, route.path))
    assert offenders == []


def test_the_process_app_freezes_what_start_up_built(local_stack: dict[str, Any]) -> None:
    # In a process of its own: freezing and logging set-up are process-wide.
    code = (
        "import asyncio, gc\n"
        "from main import create_app\n"
        "async def main():\n"
        "    app = create_app(process_app=True)\n"
        "    async with app.router.lifespan_context(app):\n"
        "        print(gc.get_freeze_count())\n"
        "asyncio.run(main())\n"
    )
    env = {
        **os.environ,
        "APP_MODE": "local",
        "DATA_DIR": local_stack["data_dir"],
        "LOCAL_STACK_URL": local_stack["api_url"],
        "LOCAL_STACK_TOKEN": local_stack["token"],
    }
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Without the freeze a full collection walks these on the event loop: ~115 ms pauses
    # (bench.app_bench: server-side max 105-131 ms before, 3-4 ms after).
    assert int(done.stdout.strip().splitlines()[-1]) > 50_000
    assert local_stack["token"] not in done.stderr
