"""GPU slots held with file locks: two runs never share a GPU, even across worker processes on one host.

A slot is held by an open file with an exclusive `flock`; the kernel drops the lock when the holder dies,
so a killed worker never leaves a slot taken (unlike a pid file or a database row).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path


class SlotPool:
    def __init__(self, slots: list[str], lock_dir: Path) -> None:
        self.slots = list(slots)
        self.lock_dir = lock_dir
        lock_dir.mkdir(parents=True, exist_ok=True)
        self._held: dict[str, int] = {}
        self.mutex = threading.Lock()  # count-claim-acquire is one step among this process's task threads

    def _try(self, slot: str) -> int | None:
        fd = os.open(self.lock_dir / f"slot-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def free(self) -> int:
        """How many slots could be taken now (probes each lock; call under `mutex`)."""
        count = 0
        for slot in self.slots:
            if slot in self._held:
                continue
            fd = self._try(slot)
            if fd is not None:
                count += 1
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
        return count

    def acquire(self, n: int) -> list[str] | None:
        """Take n free slots, or none (call under `mutex`)."""
        taken: list[tuple[str, int]] = []
        for slot in self.slots:
            if len(taken) == n:
                break
            if slot in self._held:
                continue
            fd = self._try(slot)
            if fd is not None:
                taken.append((slot, fd))
        if len(taken) < n:
            for _, fd in taken:
                os.close(fd)
            return None
        for slot, fd in taken:
            self._held[slot] = fd
        return [slot for slot, _ in taken]

    def release(self, slots: list[str]) -> None:
        with self.mutex:
            for slot in slots:
                fd = self._held.pop(slot, None)
                if fd is not None:
                    os.close(fd)  # closing drops the flock
