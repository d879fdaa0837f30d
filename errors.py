"""The app's errors. Writers translate their SDK's errors into these at one place each;
one exception handler in `api/` maps them to HTTP statuses.

    DirectWriteError
     ├── UnknownWriterError       400  no writer of that name
     ├── RequestTooLargeError     413  too many items or bytes in one request
     ├── WriterUnavailableError   503  not configured, or its target cannot be reached
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


class RequestTooLargeError(DirectWriteError):
    status_code = 413


class WriterUnavailableError(DirectWriteError):
    status_code = 503


class WriteFailedError(DirectWriteError):
    status_code = 502


class BenchmarkError(DirectWriteError):
    status_code = 409
