"""Columnar metric buffers: what `run.log` appends to, cut into the binary `blocks` bodies the server reads.

Why this shape (profiled in bench/bench_sdk.py): turning each point into a tuple, then into a JSON
number, cost the training process ~2.5 µs per point, more than the server spent storing it. Here a
`run.log` call appends one step, one time and its values to packed arrays (C-level `array` appends,
~0.1 µs per point), and a request body is those arrays' bytes in base64: no per-number formatting
on either side, and every float arrives bit for bit.

A block holds rows that share one key set (the keys of one `run.log` call, in order): `values` is
row-major, `len(steps) × len(keys)`. A script that logs train metrics every step and eval metrics
every 100 gets two blocks, one per key set.
"""

from __future__ import annotations

import base64
import re
import sys
from array import array
from typing import Any

# The server's rule for metric names (training/payloads.py KEY_RE), checked here once per key set so
# one bad name never gets a whole batch refused.
KEY_RE = re.compile(r"[A-Za-z0-9_.:/@%+\- ]{1,200}")
MAX_STEP = 2**62
_LITTLE = sys.byteorder == "little"


def _le(a: array[Any]) -> bytes:
    """The array's bytes in little-endian order (the wire's order)."""
    if _LITTLE:
        return a.tobytes()
    swapped = array(a.typecode, a)
    swapped.byteswap()
    return swapped.tobytes()


def b64(a: array[Any]) -> str:
    return base64.b64encode(_le(a)).decode("ascii")


class Block:
    """Rows of one key set: steps (int64), times (float64) and row-major values (float64)."""

    __slots__ = ("keys", "steps", "times", "values")

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.keys = keys
        self.steps: array[int] = array("q")
        self.times: array[float] = array("d")
        self.values: array[float] = array("d")

    @property
    def points(self) -> int:
        return len(self.values)

    def split(self, max_points: int) -> list[Block]:
        """Cut at row boundaries into blocks of at most `max_points` points (at least one row each)."""
        width = len(self.keys)
        rows = max(1, max_points // width)
        if len(self.steps) <= rows:
            return [self]
        parts = []
        for start in range(0, len(self.steps), rows):
            part = Block(self.keys)
            part.steps = self.steps[start : start + rows]
            part.times = self.times[start : start + rows]
            part.values = self.values[start * width : (start + rows) * width]
            parts.append(part)
        return parts

    def body(self) -> dict[str, Any]:
        return {"keys": list(self.keys), "steps": b64(self.steps), "times": b64(self.times), "values": b64(self.values)}


def blocks_body(blocks: list[Block]) -> dict[str, Any]:
    return {"blocks": [b.body() for b in blocks]}


def valid_key(key: Any) -> bool:
    return isinstance(key, str) and KEY_RE.fullmatch(key) is not None


class MetricBuffer:
    """Open blocks by key set, in the order key sets first appeared. Not thread-safe: the Sender locks it."""

    def __init__(self) -> None:
        self.blocks: dict[tuple[str, ...], Block] = {}  # open: run.log appends rows
        self.whole: list[Block] = []  # from run.log_many, complete as given
        self.points = 0

    def add_row(self, keys: tuple[str, ...], step: int, t: float, values: tuple[Any, ...]) -> None:
        """Append one row; raises TypeError (and leaves the block as it was) if a value is not a real number."""
        block = self.blocks.get(keys)
        if block is None:
            block = self.blocks[keys] = Block(keys)
        before = len(block.values)
        try:
            block.values.extend(values)  # C-level; numpy and torch scalars convert through __float__
        except (TypeError, ValueError, OverflowError):
            del block.values[before:]  # extend() keeps what it appended before the bad value
            if not block.values:
                del self.blocks[keys]
            raise
        block.steps.append(step)
        block.times.append(t)
        self.points += len(values)

    def add_block(self, block: Block) -> None:
        self.whole.append(block)
        self.points += block.points

    def take(self) -> list[Block]:
        blocks = [*self.whole, *self.blocks.values()]
        self.blocks, self.whole, self.points = {}, [], 0
        return blocks
