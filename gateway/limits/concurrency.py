"""In-flight counts for the whole server under `--workers N`: backends' and keys'
`max_concurrency` hold for the server, not per worker.

The same mechanism as the workers' rate limits (limits/shared.py): a file in the
server's run directory that every worker maps, a record per name, a POSIX record
lock around each change. A record holds one (pid, count) cell per worker, so a
worker writes only its own cell and the total is their sum; a worker that died
leaves its cell behind until a worker claims it (a cell whose pid is gone is
taken over and zeroed), so a crash cannot leak capacity for good.

A read is unlocked (the cells are aligned 32-bit words); checking room and then
taking it are two steps, so two workers may pass the check in the same few
microseconds: a cap can be exceeded by one request per racing worker, for as long
as those requests run.
"""

from __future__ import annotations

import os
import struct

from .shared import SlotTable

CELLS = 64
HEAD = struct.Struct("<16s")
CELL = struct.Struct("<ii")           # pid, count
RECORD_SIZE = HEAD.size + CELLS * CELL.size
SLOTS = 4096


class SharedCounts:
    """The file; `counter(name)` gives one name's count as this worker sees it."""

    def __init__(self, path: str) -> None:
        self._table = SlotTable(path, RECORD_SIZE, SLOTS)
        self._pid = os.getpid()

    def counter(self, name: str) -> SharedCounter | None:
        offset = self._table.claim(name)
        return SharedCounter(self._table, offset, self._pid) if offset is not None else None

    def close(self) -> None:
        self._table.close()


class SharedCounter:
    __slots__ = ("_table", "_offset", "_pid", "_cell")

    def __init__(self, table: SlotTable, offset: int, pid: int) -> None:
        self._table, self._offset, self._pid = table, offset, pid
        self._cell: int | None = None

    def value(self) -> int:
        data = self._table.map
        start = self._offset + HEAD.size
        return sum(count for _, count in CELL.iter_unpack(
            data[start:start + CELLS * CELL.size]))

    def add(self, step: int) -> None:
        table = self._table
        table.lock(self._offset)
        try:
            cell = self._cell if self._cell is not None else self._claim_cell()
            if cell is None:
                return   # more workers than cells: this one is not counted (never seen)
            pid, count = CELL.unpack_from(table.map, cell)
            CELL.pack_into(table.map, cell, self._pid, max(0, count + step))
        finally:
            table.unlock(self._offset)

    def _claim_cell(self) -> int | None:
        """This worker's cell: its own, else an empty one or a dead worker's, zeroed."""
        data = self._table.map
        free = None
        for i in range(CELLS):
            cell = self._offset + HEAD.size + i * CELL.size
            pid, _ = CELL.unpack_from(data, cell)
            if pid == self._pid:
                free = cell
                break
            if free is None and (pid == 0 or not _alive(pid)):
                free = cell
        if free is not None:
            pid, _ = CELL.unpack_from(data, free)
            if pid != self._pid:
                CELL.pack_into(data, free, self._pid, 0)
            self._cell = free
        return free


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
