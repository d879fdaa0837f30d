# Databricks notebook source
"""The bundle job `dwbench-pipeline-cdf-copy` (a notebook task of databricks.yml): bronze
(a Zerobus target, no Change Data Feed) copied into silver with CDF enabled, continuously,
by Structured Streaming:

    readStream.table(bronze) -> writeStream.toTable(silver), checkpointed in a Volume

The checkpoint holds the last bronze version copied: a restarted run resumes after it,
and Delta's sink never applies a micro-batch twice. Silver is created with
`delta.enableChangeDataFeed = true` when missing (the synced table reads its change feed).
Parameters (notebook widgets): bronze, silver, checkpoint (a /Volumes/... path).
"""

from __future__ import annotations

from typing import Any


def main(
    *, bronze: str, silver: str, checkpoint: str, spark: Any, trigger: str = "1 second"
) -> Any:
    """Start the stream; returns its StreamingQuery."""
    # The same columns as bronze, CDF on: created once, before the stream writes to it.
    spark.sql(
        f"CREATE TABLE IF NOT EXISTS {silver} "
        "TBLPROPERTIES (delta.enableChangeDataFeed = true) "
        f"AS SELECT * FROM {bronze} WHERE false"
    )
    return (
        spark.readStream.table(bronze)
        .writeStream.option("checkpointLocation", checkpoint)
        .trigger(processingTime=trigger)
        .toTable(silver)
    )


if "dbutils" in globals():  # run as the job's notebook: the runtime defines spark and dbutils
    _widgets = globals()["dbutils"].widgets
    main(
        bronze=_widgets.get("bronze"),
        silver=_widgets.get("silver"),
        checkpoint=_widgets.get("checkpoint"),
        spark=globals()["spark"],
    ).awaitTermination()
