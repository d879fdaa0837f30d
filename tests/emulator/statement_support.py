"""The statement app (SQL and, with volumes, the Files API) served for a test module."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from databricks.sdk import WorkspaceClient
from databricks.sdk.core import Config

from emulator.catalog import Catalog
from emulator.statements import create_statement_app


def client(url: str, token: str) -> WorkspaceClient:
    config = Config(host=url, token=token, auth_type="pat", retry_timeout_seconds=10)
    return WorkspaceClient(config=config)


@contextlib.contextmanager
def served_statement_app(catalog: Catalog, token: str, **options: Any) -> Iterator[str]:
    """Serve `create_statement_app(catalog, token, **options)` under uvicorn in a thread
    with its own event loop; yield its URL; stop it and close the catalog after."""
    app = create_statement_app(catalog, token, **options)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    )

    def serve() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.serve())
            loop.run_until_complete(catalog.close())
        finally:
            loop.close()

    thread = threading.Thread(target=serve, name="statement-app", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
    assert not thread.is_alive(), "server did not stop"
