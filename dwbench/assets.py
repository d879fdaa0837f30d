"""Where the files that are not code live: the web UI (`static/`), the DDL (`sql/`) and the
report templates (`templates/`).

They sit beside `main.py` and the packages, in a checkout and in an installed copy alike:
the wheel carries them as package data of the same name (pyproject.toml), so they are found
from this module's location, never from the working directory.
"""

from __future__ import annotations

from pathlib import Path

# The directory that holds main.py and the packages: the checkout, or site-packages.
ROOT = Path(__file__).resolve().parent.parent
STATIC_DIR = ROOT / "static"
SQL_DIR = ROOT / "sql"
TEMPLATES_DIR = ROOT / "templates"  # report pages (bench/report.py, bench/sweep_report.py)


def sql_text(name: str) -> str:
    """The text of `sql/<name>`."""
    return (SQL_DIR / name).read_text()
