"""The service as systemd meets it: a real `recorder run` and its NOTIFY_SOCKET, and a
notifier that keeps what an in-process service tells systemd."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from recorder.service.notify import Notifier

TIMEOUT = 30


class Listener:
    """A NOTIFY_SOCKET for a real `recorder run`: the messages, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(30)
        self.path = path

    def next(self) -> dict[str, str]:
        data = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def until(self, key: str) -> list[dict[str, str]]:
        seen = []
        while True:
            message = self.next()
            seen.append(message)
            if key in message:
                return seen


class Recorder:
    """`recorder run` as a real process, ready when it has told NOTIFY_SOCKET so."""

    def __init__(self, tmp_path: Path, config: Path, name: str = "rec") -> None:
        self.log_path = tmp_path / f"{name}.log"
        self.err_path = tmp_path / f"{name}.err"
        self.listener = Listener(tmp_path / f"{name}.notify")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "recorder", "run", "--config", str(config)],
            env={**os.environ, "NOTIFY_SOCKET": str(self.listener.path)},
            # The log is on stdout (journald's stream); stderr would carry a traceback.
            stdout=self.log_path.open("wb"),
            stderr=self.err_path.open("wb"),
        )

    def errors(self) -> str:
        return self.err_path.read_text()

    def ready(self) -> dict[str, str]:
        return self.listener.until("READY")[-1]

    def log(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line]

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(TIMEOUT)


class Recording(Notifier):
    """What the service tells systemd, kept in order; ``watchdogs`` counts WATCHDOG=1."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env)
        self.sent: list[dict[str, str | int]] = []
        self.watchdogs = 0
        self.changed = asyncio.Event()

    def send(self, **fields: str | int) -> bool:
        self.sent.append(fields)
        self.watchdogs += "WATCHDOG" in fields
        self.changed.set()
        return True

    async def wait_watchdogs(self, n: int) -> None:
        while self.watchdogs < n:
            self.changed.clear()
            await self.changed.wait()
