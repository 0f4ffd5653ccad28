"""The README's pictures of the web console, made in the browser the tests use.

A simulated daemon, the recorder with its proxy and console, and a UI-like client that
spawns sessions through the proxy (what `make demo` runs); then the system's Chromium,
through Playwright, visits each page and saves a PNG in docs/screenshots/.

    .venv/bin/python docs/screenshots.py        # or: make screenshots
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import quote

OUT = Path(__file__).parent / "screenshots"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
RECORDER = [sys.executable, "-m", "recorder"]
WAIT = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=WAIT)


def wait_for_line(log: Path, pattern: str, proc: subprocess.Popen[bytes]) -> re.Match[str]:
    """The first line of ``log`` matching ``pattern``, as the process writes it."""
    with log.open() as lines:
        while True:
            line = lines.readline()
            found = re.search(pattern, line)
            if found:
                return found
            if not line:
                if proc.poll() is not None:
                    raise SystemExit(f"a process stopped: see {log}")
                # No event to wait on in a file being written: a short pause between looks.
                time.sleep(0.05)


def record(work: Path) -> tuple[str, list[str]]:
    """Sessions recorded through the proxy; the console's URL and the sessions' ids.
    The processes stay up (the stack unwinds them) so that /live shows a live link."""
    daemon, proxy = free_port(), free_port()
    config = work / "r.toml"
    config.write_text(
        f'[daemon]\nurl = "ws://127.0.0.1:{daemon}"\n[proxy]\nlisten = "127.0.0.1:{proxy}"\n'
        f'[storage]\nurl = "sqlite:///{work / "r.db"}"\ncommit_interval = 0.1\n'
        '[web]\nlisten = "127.0.0.1:0"\n[log]\nformat = "json"\n'
    )
    simulate = [*RECORDER, "simulate", "--port", str(daemon), "--seed", "7"]
    stack.enter_context(process([*simulate, "--status-interval", "5"], work / "daemon.log"))
    rec_log = work / "recorder.log"
    recorder = stack.enter_context(process([*RECORDER, "run", "-c", str(config)], rec_log))
    url = wait_for_line(rec_log, r"(http://127\.0\.0\.1:\d+/)", recorder).group(1)
    ui = [sys.executable, "-m", "recorder.simulator.ui", f"ws://127.0.0.1:{proxy}"]
    done = subprocess.run([*ui, "--sessions", "3"], capture_output=True, text=True, check=True)
    return url.rstrip("/"), done.stdout.split()


def shoot(url: str, sessions: list[str]) -> list[Path]:
    from playwright.sync_api import sync_playwright

    first = json.loads(urllib.request.urlopen(url + "/api/sessions").read())["sessions"]
    assert first, "no sessions recorded"
    sid = sessions[0] if sessions else first[0]["id"]
    quoted = quote(sid, safe="")
    pages = {
        "sessions": "/",
        "session": f"/sessions/{quoted}",
        "replay": f"/sessions/{quoted}/replay?speed=8",
        "frames": f"/frames?session={quoted}",
        "live": "/live",
        "stats": "/stats",
    }
    OUT.mkdir(exist_ok=True)
    made = []
    with sync_playwright() as p:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        for name, path in pages.items():
            response = page.goto(url + path)
            if response is None or response.status != 200:
                print(f"skipped {path}: {response.status if response else 'no answer'}")
                continue
            page.wait_for_load_state("networkidle")
            shot = OUT / f"{name}.png"
            page.screenshot(path=str(shot))
            made.append(shot)
        browser.close()
    return made


stack = ExitStack()

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp, stack:
        console, ids = record(Path(tmp))
        for made in shoot(console, ids):
            print(made)
