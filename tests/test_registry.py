"""One registry: a writer registered without touching another file shows up in the API,
the benchmark config and the CLI's help (the UI's lists: tests/test_ui_workloads_browser.py)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

from tests.conftest import ROOT
from tests.registry_writer import ENV
from writers import EXTRA_WRITERS_ENV, WRITERS, ingest_writers, register_writer


@contextlib.contextmanager
def registered() -> Iterator[None]:
    name, _, target = ENV.partition("=")
    register_writer(name, target)
    try:
        yield
    finally:
        WRITERS.pop(name, None)


def test_a_registered_writer_is_listed_by_the_api_and_accepted(client) -> None:
    with registered():
        assert "registry-check" in ingest_writers()
        listed = {w["name"]: w for w in client.get("/api/v1/writers").json()}
        assert listed["registry-check"]["label"] == "Registry check (test-only, in memory)"
        assert listed["registry-check"]["color"] == "#12b886"
        assert listed["registry-check"]["available"] is True
        resp = client.post(
            "/api/v1/process-structured",
            json={
                "writer_type": "registry-check",
                "items": [
                    {
                        "product_id": "P1",
                        "product_name": "Pen",
                        "product_price": 1,
                        "category": "books",
                    }
                ],
            },
        )
        assert resp.status_code == 200, resp.text
        assert resp.json()["results"][0]["details"] == {"kept_in_memory": True}
        from bench.config import BenchmarkConfig

        assert BenchmarkConfig(writers=["registry-check"]).writers == ["registry-check"]
    assert "registry-check" not in {w["name"] for w in client.get("/api/v1/writers").json()}


def test_the_cli_help_lists_it_and_runs_it(tmp_path) -> None:
    env = {"PATH": "/usr/bin:/bin", EXTRA_WRITERS_ENV: ENV, "DATA_DIR": str(tmp_path)}
    help_text = subprocess.run(
        [sys.executable, "-m", "dwbench", "run", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "registry-check" in " ".join(help_text.split())
