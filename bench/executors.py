"""Which coordinator runs a run's clients, by its executor (the app and the CLI alike)."""

from __future__ import annotations

from bench.clients import ClientsRun
from bench.runner import BenchmarkRun
from writers.base import Targets

# The executors that run clients apart from the coordinator's process.
ELSEWHERE = ("processes", "spark", "databricks-job")


def clients_run(template: BenchmarkRun, targets: Targets) -> ClientsRun:
    """The coordinator of `template`'s clients: worker processes, Spark tasks on this
    machine, or the Spark tasks of a job run in the workspace."""
    executor = template.config.executor
    if executor == "spark":
        from bench.spark_driver import SparkRun

        return SparkRun(template)
    if executor == "databricks-job":
        from bench.databricks_job import DatabricksJobRun

        return DatabricksJobRun(template, targets)
    return ClientsRun(template)
