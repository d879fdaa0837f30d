"""The app against a local stack that goes away and comes back, and stream reuse."""

from __future__ import annotations

import secrets
from typing import Any

from emulator.process import LocalStackProcess
from tests.api.test_ingest import WATCH, delta_rows
from tests.app_server import AppServer
from tests.conftest import DATABRICKS_ONLY, app_settings
from tests.emulator.test_zerobus import status
from writers import ingest_writers

# Every writer that stores rows and the local stack serves, from the registry.
STORING = [name for name in ingest_writers() if name not in DATABRICKS_ONLY]


def test_many_requests_share_one_zerobus_stream(local_stack):
    before = status(local_stack)["zerobus"]["streams_created"]
    server = AppServer(app_settings(local_stack))
    with server, server.client() as http:
        batches = []
        for _ in range(25):
            resp = http.post(
                "/api/v1/process-structured", json={"writer_type": "zerobus", "items": [WATCH]}
            )
            assert resp.status_code == 200, resp.text
            batches.append(resp.json()["batch_id"])
        debug = http.get("/debug/zerobus-availability").json()
    assert status(local_stack)["zerobus"]["streams_created"] == before + 1
    assert debug["streams_created"] == 1 and debug["stream_state"] == "open"
    assert all(len(delta_rows(local_stack, b, "zerobus")) == 1 for b in batches)


def _ports(endpoints: dict[str, Any]) -> list[str]:
    pg_port = endpoints["postgres_dsn"].rsplit(":", 1)[1].split("/", 1)[0]
    return [
        "--zerobus-port", endpoints["zerobus_endpoint"].rsplit(":", 1)[1],
        "--api-port", endpoints["api_url"].rsplit(":", 1)[1],
        "--zerobus-rest-port", endpoints["zerobus_rest_url"].rsplit(":", 1)[1],
        "--mqtt-port", endpoints["mqtt_endpoint"].rsplit(":", 1)[1],
        "--kafka-port", endpoints["kafka_bootstrap"].rsplit(":", 1)[1],
        "--postgres-port", pg_port,
    ]  # fmt: skip


def test_stack_down_is_503_with_a_reason_and_back_up_works(tmp_path):
    token = secrets.token_urlsafe(16)
    stack = LocalStackProcess(tmp_path / "stack", token=token)
    endpoints = stack.start()
    restarted = LocalStackProcess(tmp_path / "stack", token=token, args=_ports(endpoints))
    server = AppServer(app_settings(endpoints))
    try:
        with server, server.client() as http:
            ok = http.post(
                "/api/v1/process-structured", json={"writer_type": "all", "items": [WATCH]}
            )
            assert ok.status_code == 200, ok.text
            assert stack.stop() == 0

            for writer in STORING:
                resp = http.post(
                    "/api/v1/process-structured", json={"writer_type": writer, "items": [WATCH]}
                )
                assert resp.status_code == 503, (writer, resp.text)
                body = resp.json()
                assert body["error"] == "writer_unavailable" and body["writer"] == writer
                assert body["message"], body
                assert token not in resp.text
            every = http.post(
                "/api/v1/process-structured", json={"writer_type": "all", "items": [WATCH]}
            )
            assert every.status_code == 503
            writers = [
                w for w in http.get("/api/v1/writers").json() if w["name"] not in DATABRICKS_ONLY
            ]
            assert [w["name"] for w in writers] == STORING
            assert [w["available"] for w in writers] == [False] * len(STORING)
            assert all(w["reason"] for w in writers)

            restarted.start()
            for writer in STORING:
                resp = http.post(
                    "/api/v1/process-structured", json={"writer_type": writer, "items": [WATCH]}
                )
                assert resp.status_code == 200, (writer, resp.text)
                assert resp.json()["processed_count"] == 1
            rows = delta_rows(endpoints, resp.json()["batch_id"], "lakebase")
            assert rows == []  # lakebase rows live in Postgres, not in the Delta table
    finally:
        stack.kill()
        restarted.stop()
