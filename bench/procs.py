"""Server processes for the benchmark and the tests: start, wait until ready, stop; CPU and memory.

`Proc` is the one wrapper every benchmark and test process goes through: its own
session (so stopping it reaches the workers it forks), its output in a log file
whose tail goes into every failure, bounded waits, and a stop that is SIGTERM
first, then SIGKILL after a grace period.

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
from typing import Callable, Sequence

CLK_TCK = os.sysconf("SC_CLK_TCK")
HOST = "127.0.0.1"
KILL_WAIT_S = 10


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
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


class ProcError(RuntimeError):
    """A process exited, or did not get ready in time; the message ends with its log tail."""


def http_status(url: str, timeout: float = 2) -> int:
    """The status of a GET (error statuses included); OSError when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               proc: Proc | None = None, interval: float = 0.1) -> None:
    """Poll `check` until it is true (an OSError counts as not yet), for `timeout` s at most.

    With `proc`, its exit ends the wait at once, and its log tail is in the error.
    """
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        if proc is not None and not proc.running:
            raise ProcError(f"{what}: {proc.name} exited with {proc.returncode}\n{proc.tail()}")
        try:
            if check():
                return
        except OSError as exc:
            last = exc
        time.sleep(interval)
    tail = proc.tail() if proc is not None else ""
    raise ProcError(f"{what}: not within {timeout:g} s (last error: {last})\n{tail}")


class Proc:
    """A server process in its own session, its output appended to a log file.

    Nothing runs until start(); start() again after a stop or kill() is a restart.
    As a context manager, it is stopped on the way out, whatever happened.
    """

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: str | Path | None = None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.env = env
        self.cwd = cwd
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        if self.running:
            raise ProcError(f"{self.name} is already running")
        with self.log_path.open("ab") as log:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log,
                                          stderr=subprocess.STDOUT, env=self.env,
                                          cwd=self.cwd, start_new_session=True)
        return self

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.pid

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        """Until a GET of `url` answers 200; ProcError if the process exits first."""
        wait_until(lambda: http_status(url) == 200, timeout, f"{self.name} ready at {url}",
                   self)

    def send_signal(self, sig: int) -> None:
        """To the process itself (not its workers): SIGHUP, or a SIGTERM a test watches."""
        assert self.popen is not None, f"{self.name} was never started"
        self.popen.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.popen is not None, f"{self.name} was never started"
        return self.popen.wait(timeout)

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to the whole group, as a crash would."""
        if self.running:
            self._signal_group(signal.SIGKILL)
            self.wait(KILL_WAIT_S)

    def stop(self, grace: float = 10) -> int | None:
        """SIGTERM to the group; SIGKILL if it is still there after `grace` s."""
        if self.running:
            self._signal_group(signal.SIGTERM)
            try:
                self.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.returncode

    def output(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 40) -> str:
        last = self.output().splitlines()[-lines:]
        return f"--- last lines of {self.log_path} ---\n" + "\n".join(last)
