"""Error messages never carry the absolute path of the data directory: a FAILED statement
whose cause (Arrow, here) names the file by its path says `<data-dir>` instead (issue 11,
finding 7)."""

from __future__ import annotations

import io
import secrets
from pathlib import Path

from databricks.sdk.service.sql import StatementState

from emulator.errors import scrub_paths
from tests.conftest import products_ddl, run_sql, workspace_client


def test_scrub_paths_replaces_the_data_dir_given_and_resolved(tmp_path: Path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    text = f"cannot open {link}/tables/a/b/c/x.parquet nor file://{real}/volumes/v/y"
    assert scrub_paths(text, link) == (
        "cannot open <data-dir>/tables/a/b/c/x.parquet nor file://<data-dir>/volumes/v/y"
    )
    assert scrub_paths("/Volumes/main/default/stage/x.parquet", link) == (
        "/Volumes/main/default/stage/x.parquet"  # the client's own names stay
    )


def test_a_failed_copy_into_names_the_volume_path_not_the_host_path(local_stack):
    table = f"main.default.scrub_{secrets.token_hex(4)}"
    run_sql(local_stack, products_ddl(table))
    stage = f"/Volumes/main/default/stage/scrub_{secrets.token_hex(4)}"
    w = workspace_client(local_stack)
    w.files.upload(f"{stage}/empty.parquet", io.BytesIO(b""), overwrite=True)
    resp = w.statement_execution.execute_statement(
        statement=f"COPY INTO {table} FROM '{stage}' FILEFORMAT = PARQUET",
        warehouse_id=local_stack["warehouse_id"],
        wait_timeout="30s",
    )
    assert resp.status.state == StatementState.FAILED
    message = resp.status.error.message
    data_dir = str(Path(local_stack["data_dir"]).resolve())
    assert data_dir not in message and local_stack["data_dir"] not in message
    assert message.startswith(
        f"[FAILED_READ_FILE.NO_HINT] Error while reading file {stage}/empty.parquet: it is not "
        "a readable Parquet file ("
    )
    assert "<data-dir>/volumes/" in message, message  # Arrow's text names the file
