"""Crash recovery and stream rotation, each against a local stack of its own."""

from __future__ import annotations

import asyncio
import secrets
import threading
from collections import Counter
from typing import Any

import httpx
from zerobus.sdk.shared import AckCallback

from emulator.process import LocalStackProcess
from tests.conftest import products_ddl, run_sql
from tests.emulator.zerobus_support import async_stream, fast_options, product, read_rows, to_proto

TABLE = "main.default.products"
BATCH = 100


class RecordedAcks(AckCallback):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.acked: list[int] = []

    def on_ack(self, offset: int) -> None:
        with self.lock:
            self.acked.append(offset)

    def on_error(self, offset: int, error_message: str) -> None:
        pass

    def snapshot(self) -> set[int]:
        with self.lock:
            return set(self.acked)


def _batch(k: int) -> list[dict[str, Any]]:
    return [product(k * BATCH + i, prefix=f"b{k:04d}") for i in range(BATCH)]


async def test_sigkill_mid_stream_loses_no_acknowledged_row(tmp_path):
    token = secrets.token_urlsafe(16)
    first = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres"])
    endpoints = first.start()
    run_sql(endpoints, products_ddl(TABLE))
    ports = [
        "--zerobus-port", endpoints["zerobus_endpoint"].rsplit(":", 1)[1],
        "--api-port", endpoints["api_url"].rsplit(":", 1)[1],
    ]  # fmt: skip
    acks = RecordedAcks()
    stream = await async_stream(
        endpoints,
        TABLE,
        options=fast_options(ack_callback=acks, recovery_retries=20, recovery_backoff_ms=250),
    )
    second = LocalStackProcess(tmp_path / "data", token=token, args=["--no-postgres", *ports])
    sent = 0
    acked_before_kill: set[int] = set()
    try:
        for k in range(60):
            offset = await stream.ingest_records_offset([to_proto(r) for r in _batch(k)])
            assert offset == k
            sent += 1
            if k == 30:
                await stream.wait_for_offset(20)
                # Acks are cumulative: offset 20 acknowledged means 0..20 are. The callback
                # may report more (it runs on its own thread, so possibly not yet all of them).
                acked_before_kill = set(range(21)) | acks.snapshot()
                first.kill()
                await asyncio.to_thread(second.start)
        await stream.flush()
        await stream.close()
        rows = read_rows(endpoints, TABLE)
    finally:
        first.kill()
        second.stop()

    ids = Counter(r["record_id"] for r in rows)
    present_batches = {int(rid[1:5]) for rid in ids}
    # Every row acknowledged before the kill survived it ...
    assert acked_before_kill <= present_batches
    for k in acked_before_kill:
        assert all(ids[r["record_id"]] >= 1 for r in _batch(k))
    # ... and after recovery every sent row is there; re-sent rows may appear twice.
    assert set(ids) == {r["record_id"] for k in range(sent) for r in _batch(k)}
    duplicates = sum(n - 1 for n in ids.values())
    print(f"rows={len(rows)} unique={len(ids)} duplicates={duplicates}")
    assert duplicates % BATCH == 0  # whole re-sent batches, never partial ones


async def test_stream_rotation_keeps_going_without_loss(tmp_path):
    stack = LocalStackProcess(
        tmp_path / "data",
        token=secrets.token_urlsafe(16),
        args=["--no-postgres", "--rotation-interval", "0.7", "--rotation-grace", "0.3"],
    )
    endpoints = stack.start()
    try:
        run_sql(endpoints, products_ddl(TABLE))
        stream = await async_stream(endpoints, TABLE)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 3.5
        k = 0
        while loop.time() < deadline:
            await stream.ingest_records_offset([to_proto(r) for r in _batch(k)])
            k += 1
            await asyncio.sleep(0.01)
        await stream.flush()
        await stream.close()
        status = httpx.get(
            f"{endpoints['api_url']}/api/local/status",
            headers={"Authorization": f"Bearer {endpoints['token']}"},
        ).json()
        rows = read_rows(endpoints, TABLE)
    finally:
        assert stack.stop() == 0
    assert status["zerobus"]["streams_created"] >= 3
    ids = Counter(r["record_id"] for r in rows)
    assert set(ids) == {r["record_id"] for j in range(k) for r in _batch(j)}
    print(f"batches={k} streams={status['zerobus']['streams_created']} rows={len(rows)}")
