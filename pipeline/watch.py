"""A WebSocket client of `/ws/fleet` that behaves as the live map does: it answers pings,
and reports each "changes" message's receipt (the "browser" hop). The CLI and the
benchmark use it where no browser watches; it reconnects when the server asks (1013)."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import structlog
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

log = structlog.get_logger(__name__)


@dataclass
class WatchStats:
    snapshots: int = 0
    changes: int = 0
    drivers_received: int = 0
    reconnects: int = 0


async def watch(url: str, stop: asyncio.Event, stats: WatchStats) -> None:
    """Follow `url` (ws://.../ws/fleet?path=...) until `stop` is set."""
    while not stop.is_set():
        try:
            async with connect(url, max_size=None) as ws:
                while not stop.is_set():
                    try:
                        text = await asyncio.wait_for(ws.recv(), 0.5)
                    except TimeoutError:
                        continue
                    received_us = time.time_ns() // 1000
                    message = json.loads(text)
                    kind = message.get("type")
                    if kind == "snapshot":
                        stats.snapshots += 1
                    elif kind == "changes":
                        stats.changes += 1
                        stats.drivers_received += len(message["drivers"])
                        await ws.send(
                            json.dumps(
                                {
                                    "type": "received",
                                    "sent_us": message["sent_us"],
                                    "received_us": received_us,
                                }
                            )
                        )
                    elif kind == "ping":
                        await ws.send(
                            json.dumps(
                                {
                                    "type": "pong",
                                    "server_us": message["server_us"],
                                    "client_us": time.time_ns() // 1000,
                                }
                            )
                        )
        except (ConnectionClosed, OSError) as exc:
            if stop.is_set():
                return
            stats.reconnects += 1
            log.warning("watch.reconnecting", url=url, reason=str(exc)[:200])
            await asyncio.sleep(0.2)
