"""The web console as tests drive it: recordings written by the writer's own code, the
real `recorder web` as a subprocess on 127.0.0.1 port 0, plain HTTP requests, and the
system's Chromium through Playwright."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import Message
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.cleanup_scripts import Script, record

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HOSTILE = ["<script>alert(1)</script>", '" onerror="x', "javascript:alert(1)", "{{7*7}}"]


def session_frame(sid: str, status: str, orchestrator: str, description: str) -> bytes:
    session = {
        "id": sid,
        "status": status,
        "orchestratorId": orchestrator,
        "type": "chat",
        "task": {"id": f"t-{sid}", "description": description},
    }
    return json.dumps({"type": "session_status_update", "session": session}).encode()


def write(db: Path | str, script: Script) -> None:
    """``script`` recorded by the writer's code into a SQLite file or a PostgreSQL URL."""
    if isinstance(db, Path):
        url = f"sqlite:///{db}"
    else:
        url = db.replace("postgresql://", "postgresql+asyncpg://")  # the writer's driver
    asyncio.run(record(url, script))


@contextmanager
def served(
    db: Path | str, *args: str, env: dict[str, str] | None = None, secret: str = "\0"
) -> Iterator[str]:
    """`recorder web` on a free port; its URL, once it listens. Whatever it says on
    stderr holds no traceback and never ``secret``."""
    command = [sys.executable, "-m", "recorder", "web", "--database", str(db)]
    proc = subprocess.Popen(
        [*command, "--listen", "127.0.0.1:0", *args],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        found = re.search(r"http://\S+/", line)
        assert found, line
        yield found.group(0).rstrip("/")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stderr is not None:
            rest = proc.stderr.read()
            assert "Traceback" not in rest and secret not in rest, rest
            proc.stderr.close()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def get(url: str, method: str = "GET", **headers: str) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with OPENER.open(request, timeout=10) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers, exc.read().decode()


def ids_in(html: str) -> list[str]:
    return re.findall(r'<td class="id"><a href="/sessions/[^"]*">([^<]*)</a>', html)


# Debian's Chromium (.ci/run installs it); Playwright's own download cannot reach its
# servers here.
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Browser]:
    """The system's Chromium, headless, through Playwright."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail("no chromium: `apt-get install -y chromium` (.ci/run does)")
    with sync_playwright() as p:
        # As root (CI), Chromium refuses to start without --no-sandbox.
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            browser.close()
