"""The app's errors. Writers translate their SDK's errors into these at one place each;
one exception handler in `api/` maps them to HTTP statuses.

    DirectWriteError
     ├── UnknownWriterError       400  no writer of that name
     ├── InvalidSchemaError       400  a schema, DDL or sample row that cannot be used
     ├── UnknownWorkloadError     404  no workload of that name
     ├── RequestTooLargeError     413  too many items or bytes in one request
     ├── WriterUnavailableError   503  not configured, or its target cannot be reached
     │    └── SchemaNotSupportedError  422  the writer's path cannot carry a column's type
     ├── PoolWaitError            503  the target is up, but no connection of the writer's
     │                                 pool came free in time (backpressure, not an outage)
     ├── WriteFailedError         502  the target refused or failed the write
     ├── BenchmarkError                benchmark runs (409 when one is already running)
     └── ResourceLimitError       422  a benchmark whose in-flight memory passes the budget

A failed write never counts rows as written; the message says why, without secrets.
"""

from __future__ import annotations


class DirectWriteError(Exception):
    """Base of every error the app raises on purpose."""

    status_code = 500
    error = "error"

    def __init__(self, message: str, *, writer: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.writer = writer


class UnknownWriterError(DirectWriteError):
    status_code = 400
    error = "unknown_writer"


class InvalidSchemaError(DirectWriteError):
    """A schema that cannot be used; `column` names the column at fault when there is one."""

    status_code = 400
    error = "invalid_schema"

    def __init__(
        self, message: str, *, column: str | None = None, writer: str | None = None
    ) -> None:
        super().__init__(message, writer=writer)
        self.column = column


class UnknownWorkloadError(DirectWriteError):
    status_code = 404
    error = "unknown_workload"


class RequestTooLargeError(DirectWriteError):
    status_code = 413
    error = "request_too_large"


class WriterUnavailableError(DirectWriteError):
    status_code = 503
    error = "writer_unavailable"


class SchemaNotSupportedError(WriterUnavailableError):
    """The writer refuses the workload before writing anything: its path cannot carry a type."""

    status_code = 422
    error = "schema_not_supported"


class PoolWaitError(DirectWriteError):
    """A write waited its time for a pooled connection and got none: the writer's own load,
    not the target being down (which is WriterUnavailableError)."""

    status_code = 503
    error = "pool_wait"


class WriteFailedError(DirectWriteError):
    status_code = 502
    error = "write_failed"


class BenchmarkError(DirectWriteError):
    status_code = 409
    error = "conflict"


class ResourceLimitError(DirectWriteError):
    """A benchmark refused before it starts: what it would hold in memory passes the budget."""

    status_code = 422
    error = "over_budget"
