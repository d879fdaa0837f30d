"""Errors of the local stack.

    EmulatorError
     ├── TableNotFoundError      no table of that name in the catalog
     ├── TableExistsError        CREATE TABLE of a name already taken
     ├── SchemaMismatchError     a record or descriptor does not fit the table
     └── WriterClosedError       an append after the table writer stopped

Each front end (gRPC, HTTP) maps these to its own status codes in one place.
"""

from pathlib import Path


class EmulatorError(Exception):
    """Base class of every error the local stack raises on purpose."""


class TableNotFoundError(EmulatorError):
    def __init__(self, name: str) -> None:
        super().__init__(f"table {name} does not exist")
        self.name = name


class TableExistsError(EmulatorError):
    def __init__(self, name: str) -> None:
        super().__init__(f"table {name} already exists")
        self.name = name


class SchemaMismatchError(EmulatorError):
    """A value, record or descriptor does not match the table schema."""

    def __init__(self, message: str, column: str | None = None) -> None:
        super().__init__(message)
        self.column = column


class WriterClosedError(EmulatorError):
    def __init__(self, table: str) -> None:
        super().__init__(f"table writer for {table} is closed")


def scrub_paths(text: str, data_dir: Path) -> str:
    """`text` with the data directory's absolute path replaced by `<data-dir>`.

    Messages from delta-rs, Arrow or the OS name files by absolute path; clients get the
    message, and the host's layout is none of theirs (the logs keep the full text).
    """
    forms = {str(data_dir), str(data_dir.resolve())}
    for form in sorted(forms, key=len, reverse=True):
        if len(form) > 1:
            text = text.replace(form, "<data-dir>")
    return text
