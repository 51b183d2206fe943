"""CSV cells that a spreadsheet will not run as formulas (OWASP "CSV Injection").

OWASP's advice: no cell may begin with `=`, `+`, `-`, `@`, a tab or a carriage return; prefix such a cell
with a single quote, which spreadsheets show as text and do not evaluate, and quote every cell that
holds the separator or a quote (the csv module does that part). Only text is escaped: numbers the
export writes itself stay numbers. Every CSV the platform writes from user-supplied strings goes
through `safe_cell` (study judgments, run history; use it for any new CSV export).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """`value`, with a leading single quote when it is text a spreadsheet would read as a formula."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return value


def safe_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {key: safe_cell(value) for key, value in row.items()}
