"""Processes for the speed benchmark: start, wait until ready, measure CPU and memory, stop.

CPU is read from /proc/<pid>/stat (utime + stime) for a process and all its
descendants, so forked workers and helper processes count: CPU seconds per unit
of work is the figure that holds on a noisy shared machine, where wall-clock
throughput does not.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(b")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    """pid and every live descendant."""
    kids = _children()
    out, todo = [], [pid]
    while todo and len(out) < 10_000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def cpu_by_pid(pid: int) -> dict[int, float]:
    """User + system CPU seconds of each process of the tree (reaped children included)."""
    out = {}
    for p in tree(pid):
        try:
            stat = Path(f"/proc/{p}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        # fields[0] is state (field 3); utime, stime, cutime, cstime are fields 14..17
        out[p] = sum(int(x) for x in fields[11:15]) / CLK_TCK
    return out


def cpu_seconds(pid: int) -> float:
    return sum(cpu_by_pid(pid).values())


def memory(pid: int) -> tuple[int, int]:
    """(current RSS, sum of each process's VmHWM) of the tree, in bytes."""
    rss = hwm = 0
    for p in tree(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss += int(line.split()[1]) * 1024
            elif line.startswith("VmHWM:"):
                hwm += int(line.split()[1]) * 1024
    return rss, hwm


class Proc:
    """One server process of the benchmark, in its own process group."""

    def __init__(self, name: str, argv: list[str], log: Path, env: dict | None = None,
                 cwd: str | None = None) -> None:
        self.name = name
        self.log = log
        self._fh = open(log, "wb")
        self.popen = subprocess.Popen(argv, stdout=self._fh, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, env=env, cwd=cwd,
                                      start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait_ready(self, url: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}; "
                                   f"see {self.log}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready at {url} after {timeout:g} s; "
                           f"see {self.log}:\n{self.tail()}")

    def tail(self, n: int = 2000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 10) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(5)
            except ProcessLookupError:
                pass
        self._fh.close()
