"""Object ids typed by users (query strings, form fields, path segments): ASCII digits only, and in range.

`str.isdigit()` alone is not a check: it is true for "²" (which `int()` refuses: a 500) and for digits of other
scripts such as "٣" (which `int()` reads as 3), and it bounds nothing (a 40-digit id overflows PostgreSQL's
bigint). Every id a user sends goes through `parse_id`, and what does not parse is treated as no id at all.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_ID_DIGITS = 18  # < 2**63: any bigint primary key


def parse_id(raw: object) -> int | None:
    """The id `raw` spells (surrounding spaces allowed), or None when it is not 1-18 ASCII digits."""
    if not isinstance(raw, str):
        return None
    text = raw.strip()
    if not (0 < len(text) <= MAX_ID_DIGITS and text.isascii() and text.isdigit()):
        return None
    return int(text)


def parse_ids(values: Iterable[str], *, limit: int) -> list[int]:
    """The ids in comma-separated `values` (`?runs=1,2&runs=3`), in order, at most `limit`; the rest ignored."""
    found: list[int] = []
    for value in values:
        for part in value.split(","):
            number = parse_id(part)
            if number is not None:
                found.append(number)
                if len(found) >= limit:
                    return found
    return found
