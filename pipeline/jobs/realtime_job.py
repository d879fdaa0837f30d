# Databricks notebook source
"""The bundle job `dwbench-pipeline-realtime` (a notebook task of databricks.yml): bronze
straight into Lakebase with the ForeachWriter (pipeline.realtime.PostgresForeachWriter:
batches of up to 1,000 rows or 100 ms; upsert ON CONFLICT (driver_id) with a version
column, insert or COPY), each connection authenticated with an OAuth token from
`generate_database_credential` (valid an hour; a partition's connection lives for one
micro-batch). Parameters (widgets): bronze, checkpoint, instance, host (the direct,
non-pooled one is used), database, user, mode.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any


def main(
    *,
    bronze: str,
    checkpoint: str,
    instance: str,
    host: str,
    database: str,
    user: str,
    mode: str,
    spark: Any,
) -> Any:
    """Start the stream; returns its StreamingQuery."""
    from pipeline.pg import direct_host
    from pipeline.realtime import MODES, PostgresForeachWriter

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    direct = direct_host(host)

    def connect_kwargs() -> dict[str, Any]:
        from databricks.sdk import WorkspaceClient

        credential = WorkspaceClient().database.generate_database_credential(
            instance_names=[instance], request_id=str(uuid.uuid4())
        )
        return {
            "host": direct,
            "dbname": database,
            "user": user,
            "password": credential.token,
            "sslmode": "require",
        }

    writer = PostgresForeachWriter(connect_kwargs, mode)  # type: ignore[arg-type]
    return (
        spark.readStream.table(bronze)
        .writeStream.option("checkpointLocation", checkpoint)
        .foreach(writer)
        .start()
    )


if "dbutils" in globals():  # run as the job's notebook: the runtime defines spark and dbutils
    # A workspace-file notebook runs in its own folder: the repository root is two up.
    sys.path.insert(0, str(Path.cwd().parents[1]))
    _widgets = globals()["dbutils"].widgets
    main(
        bronze=_widgets.get("bronze"),
        checkpoint=_widgets.get("checkpoint"),
        instance=_widgets.get("instance"),
        host=_widgets.get("host"),
        database=_widgets.get("database"),
        user=_widgets.get("user"),
        mode=_widgets.get("mode"),
        spark=globals()["spark"],
    ).awaitTermination()
