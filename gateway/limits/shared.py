"""Rate limits shared by the workers of one server: the buckets in a mapped file.

With `--workers N` each worker would otherwise grant every key its whole rpm/tpm,
N times over. `SharedLimiter` is limits/buckets.py's `Limiter` with each key's bucket
levels kept in one small file of the server's run directory, which every worker
maps: before each admit, charge or header read the worker loads the key's levels
under a lock on the key's record, runs the same bucket arithmetic, and stores them.

Why a mapped file with POSIX record locks: the critical section is a few
microseconds of arithmetic, so the simplest correct thing is a lock around it.
A record lock is one syscall each way, waiters are woken by the kernel (no
polling; SQLite's busy handler sleeps whole milliseconds under contention), it
dies with its holder, and keys on different records never wait for each other.
`time.monotonic()` is one clock for every process on the machine.

The file is a hash table of fixed 64-byte records: a key's name digest, then
(capacity, level, updated) for rpm and tpm. Records are claimed under a lock
on the header and never freed; the table holds SLOTS keys, and a key that finds
it full is limited by its worker alone (logged once).
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from typing import Any, Callable, Iterable

from ..config import ApiKey
from ..log import server_logger
from .buckets import KeyBuckets, Limiter, Refusal, usage_tokens

RECORD = struct.Struct("<16s6d")   # name digest; rpm cap, level, updated; tpm the same
SIZE = RECORD.size                 # 64 bytes; the header (the claim lock) is one record
SLOTS = 8192
FILE_SIZE = SIZE * (SLOTS + 1)
EMPTY = bytes(16)


class SlotTable:
    """Records of `size` bytes, each starting with its name's 16-byte digest; the other
    users of the same mechanism (limits/concurrency.py) give their own record size."""

    def __init__(self, path: str, size: int = SIZE, slots: int = SLOTS) -> None:
        self._size, self._slots = size, slots
        file_size = size * (slots + 1)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        if os.fstat(self._fd).st_size < file_size:
            os.ftruncate(self._fd, file_size)   # zeros: every record empty
        self._map = mmap.mmap(self._fd, file_size)

    @property
    def map(self) -> mmap.mmap:
        return self._map

    def close(self) -> None:
        self._map.close()
        os.close(self._fd)

    def lock(self, offset: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_EX, self._size, offset)

    def unlock(self, offset: int) -> None:
        fcntl.lockf(self._fd, fcntl.LOCK_UN, self._size, offset)

    def claim(self, name: str) -> int | None:
        """The offset of `name`'s record, claimed if new; None when the table is full."""
        digest = hashlib.blake2b(name.encode(), digest_size=16).digest()
        slots, size = self._slots, self._size
        start = int.from_bytes(digest[:8], "little") % slots
        self.lock(0)
        try:
            for i in range(slots):
                offset = size * (1 + (start + i) % slots)
                held = self._map[offset:offset + 16]
                if held == digest:
                    return offset
                if held == EMPTY:
                    self._map[offset:offset + 16] = digest   # the rest is zeros already
                    return offset
            return None
        finally:
            self.unlock(0)

    def load(self, offset: int, buckets: KeyBuckets, now: float) -> None:
        """Set the worker's bucket objects to the shared levels."""
        _, *values = RECORD.unpack_from(self._map, offset)
        for bucket, (cap, level, updated) in ((buckets.rpm, values[:3]),
                                              (buckets.tpm, values[3:])):
            if bucket is None:
                continue
            limit = bucket.capacity
            if not cap:   # no worker used this limit yet: a full bucket
                bucket.level, bucket.updated = limit, now
                continue
            bucket.capacity, bucket.level, bucket.updated = cap, level, updated
            if cap != limit:   # this worker's config changed the limit (a reload)
                bucket.refill(now)
                bucket.resize(limit)

    def store(self, offset: int, buckets: KeyBuckets) -> None:
        values: list[float] = []
        for bucket in (buckets.rpm, buckets.tpm):
            values += (0.0, 0.0, 0.0) if bucket is None else (
                bucket.capacity, bucket.level, bucket.updated)
        digest = self._map[offset:offset + 16]
        RECORD.pack_into(self._map, offset, digest, *values)


class SharedLimiter(Limiter):
    """`Limiter` whose buckets every worker of the server shares."""

    def __init__(self, path: str, keys: Iterable[ApiKey] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._table = SlotTable(path)
        self._offsets: dict[str, int | None] = {}
        super().__init__(keys, clock)

    async def close(self) -> None:
        self._table.close()

    def admit(self, name: str) -> Refusal | None:
        offset = self._enter(name)
        try:
            return super().admit(name)
        finally:
            self._leave(name, offset)

    def charge(self, name: str | None, usage: dict[str, Any] | None) -> None:
        buckets = self._keys.get(name) if name else None
        if buckets is None or buckets.tpm is None or not usage_tokens(usage):
            return   # nothing to write: no lock (a lock and unlock are two syscalls)
        offset = self._enter(name)
        try:
            super().charge(name, usage)
        finally:
            self._leave(name, offset)

    def headers(self, name: str | None) -> dict[str, str]:
        """Read without the lock: a header is a snapshot anyway, and nothing is written."""
        buckets = self._keys.get(name) if name else None
        offset = self._offset(name) if buckets is not None else None
        if offset is not None:
            self._table.load(offset, buckets, self._clock())
        return super().headers(name)

    def _offset(self, name: str) -> int | None:
        offset = self._offsets.get(name, -1)
        if offset == -1:
            offset = self._offsets[name] = self._table.claim(name)
            if offset is None:
                server_logger.warning("rate limits: the shared table is full; key %s is "
                                      "limited per worker", name)
        return offset

    def _enter(self, name: str | None) -> int | None:
        """Lock `name`'s record and load it; None for a key without limits."""
        buckets = self._keys.get(name) if name else None
        if buckets is None:
            return None
        offset = self._offset(name)
        if offset is not None:
            self._table.lock(offset)
            self._table.load(offset, buckets, self._clock())
        return offset

    def _leave(self, name: str | None, offset: int | None) -> None:
        if offset is None:
            return
        try:
            buckets = self._keys.get(name)
            if buckets is not None:
                self._table.store(offset, buckets)
        finally:
            self._table.unlock(offset)
