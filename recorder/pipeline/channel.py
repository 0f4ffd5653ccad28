"""How the writer processes talk: length-prefixed pickles over a socket pair.

Each child is a plain ``python -c`` process (no multiprocessing: its resource
tracker would be one more process) that inherits one end of a socket pair. Its
first message is its :class:`Settings`; its first answer is :class:`Ready` or
:class:`Failed`. After that, requests are ``(request id, operation)`` and answers
``(request id, ok, result or error text)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recorder.alerts.spec import AlertsConfig

_HEADER = struct.Struct("!Q")
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Settings:
    """What every child is told first. The database URL travels here, never in argv."""

    url: str
    log_level: str
    log_format: str
    instance: str = "default"
    # The last run did not stop cleanly: check the database before using it.
    unclean: bool = False
    # A recorder has used this database before (its lock file says so): a file
    # SQLite cannot open may then be set aside even without SQLite's header.
    used_before: bool = False
    # The [alerts] configuration, for the classifier's frame rules (None: no alerts).
    alerts: AlertsConfig | None = None


@dataclass(frozen=True, slots=True)
class Ready:
    """The database is migrated and open: revisions before and after the migration,
    and the database process's PID (the service kills it itself when it must)."""

    before: str | None
    after: str | None
    pid: int | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """A child could not start, and why, in one line."""

    reason: str
    # The configuration is wrong (storage.url names a file that is no database):
    # starting again cannot help, so the service exits 2.
    config_error: bool = False


# A request down the line: (request id, operation); an answer: (request id, ok, result).
Answer = tuple[int, bool, Any]


async def send(stream: asyncio.StreamWriter, message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)))
    stream.write(data)
    await stream.drain()


async def receive(stream: asyncio.StreamReader) -> Any:
    """The next message, or None when the other side has gone."""
    try:
        (size,) = _HEADER.unpack(await stream.readexactly(_HEADER.size))
        return pickle.loads(await stream.readexactly(size))
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


def one_line(exc: BaseException) -> str:
    """An exception as the one line an answer or a log carries."""
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


async def spawn(entry: str) -> tuple[Any, asyncio.StreamReader, asyncio.StreamWriter]:
    """A Python child process running ``recorder.pipeline.processes.<entry>``, and a socket to it."""
    ours, theirs = socket.socketpair()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        f"from recorder.pipeline.processes import {entry}; {entry}()",
        str(theirs.fileno()),
        pass_fds=(theirs.fileno(),),
        stdin=asyncio.subprocess.DEVNULL,
    )
    theirs.close()
    reader, stream = await asyncio.open_connection(sock=ours)
    return process, reader, stream


class Pidfds:
    """Processes held by pidfd (Linux): killed through a handle no other process can
    take over once theirs is gone, and known to have exited when it turns readable.
    Grandchildren too, which asyncio cannot wait for."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._fds)

    def hold(self, pid: int) -> None:
        try:
            self._fds.append(os.pidfd_open(pid))
        except (AttributeError, OSError):
            pass  # not Linux, or already gone

    def kill(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)

    def wait_gone(self, within: float) -> bool:
        """Whether every one has exited, waiting ``within`` seconds at most (blocking)."""
        poller = select.poll()
        for fd in self._fds:
            poller.register(fd, select.POLLIN)
        running = set(self._fds)
        deadline = time.monotonic() + within
        while running and (remaining := deadline - time.monotonic()) > 0:
            for fd, _ in poller.poll(remaining * 1000):
                running.discard(fd)
                poller.unregister(fd)
        return not running

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


ChildMain = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Settings], Awaitable[None]]


def die_with_parent() -> None:
    """SIGKILL when the parent goes, whatever this process is doing (Linux): a child
    must not outlive a killed service and go on writing into its database."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the closed socket ends it instead
        return
    if os.getppid() == 1:  # the parent was already gone before the call
        os._exit(1)


def run_child(main: ChildMain) -> None:
    """A child's life: ignore stop signals, read its settings, configure logging, run."""
    die_with_parent()
    # The service decides when to stop (after draining); systemd's SIGTERM to the
    # whole control group, or Ctrl-C in a terminal, must not kill these first.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=int(sys.argv[1]))

    async def child() -> None:
        reader, stream = await asyncio.open_connection(sock=sock)
        settings = await receive(reader)
        if not isinstance(settings, Settings):
            return
        from recorder import logs

        logs.configure(settings.log_level, settings.log_format)
        await main(reader, stream, settings)

    try:
        asyncio.run(child())
    except (ConnectionError, BrokenPipeError):
        # The other end went away (an unclean stop): the parent says what was lost,
        # in one line; a traceback from every child would only bury it.
        pass
