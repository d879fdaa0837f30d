"""The app's errors. Writers translate their SDK's errors into these at one place each;
one exception handler in `api/` maps them to HTTP statuses.

    DirectWriteError
     ├── UnknownWriterError       400  no writer of that name
     ├── InvalidSchemaError       400  a schema, DDL or sample row that cannot be used
     ├── UnknownWorkloadError     404  no workload of that name
     ├── RequestTooLargeError     413  too many items or bytes in one request
     ├── WriterUnavailableError   503  not configured, or its target cannot be reached
     │    └── SchemaNotSupportedError  422  the writer's path cannot carry a column's type
     ├── WriteFailedError         502  the target refused or failed the write
     └── BenchmarkError                benchmark runs (409 when one is already running)

A failed write never counts rows as written; the message says why, without secrets.
"""

from __future__ import annotations


class DirectWriteError(Exception):
    """Base of every error the app raises on purpose."""

    status_code = 500

    def __init__(self, message: str, *, writer: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.writer = writer


class UnknownWriterError(DirectWriteError):
    status_code = 400


class InvalidSchemaError(DirectWriteError):
    """A schema that cannot be used; `column` names the column at fault when there is one."""

    status_code = 400

    def __init__(
        self, message: str, *, column: str | None = None, writer: str | None = None
    ) -> None:
        super().__init__(message, writer=writer)
        self.column = column


class UnknownWorkloadError(DirectWriteError):
    status_code = 404


class RequestTooLargeError(DirectWriteError):
    status_code = 413


class WriterUnavailableError(DirectWriteError):
    status_code = 503


class SchemaNotSupportedError(WriterUnavailableError):
    """The writer refuses the workload before writing anything: its path cannot carry a type."""

    status_code = 422


class WriteFailedError(DirectWriteError):
    status_code = 502


class BenchmarkError(DirectWriteError):
    status_code = 409
