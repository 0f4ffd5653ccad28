"""What the web console adds to the idle service: ``recorder run`` recording a
simulated daemon's session into SQLite, idle, once without ``[web] listen`` and once
with it (the console's imports loaded by a request of ``/`` and of the session's
page); PSS of the service's processes from /proc/PID/smaps_rollup. The two kinds
alternate (``harness.alternate``): each sees the same machine."""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import harness as h
from firehose import LISTENING
from recording import NO_PROXY, STARTED, process_tree
from web_common import fetch

TARGET_ADDED_MB = 15.0
# The console's URL in the service's log (its daemon's is ws://, never http://).
CONSOLE = re.compile(r"http://127\.0\.0\.1:(\d+)")
FINISHED = "SELECT id FROM sessions WHERE finished_us IS NOT NULL LIMIT 1"
WITHOUT, WITH = "without console", "with console"


def pss_kib(pid: int) -> int:
    """PSS of a process and its descendants, summed: each shared page counted once
    over the processes that map it (so the tree's sum is what the tree costs)."""
    return sum(own_pss_kib(p) for p in process_tree(pid))


def own_pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    raise h.BenchError(f"no Pss in /proc/{pid}/smaps_rollup")


def wait_for(what: str, seconds: float, found: Any) -> Any:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        if (value := found()) is not None:
            return value
        time.sleep(0.05)
    raise h.BenchError(f"no {what} within {seconds:.0f} s")


def service(root: Path, console: bool, idle: float) -> dict[str, Any]:
    """One idle service: started, its simulated session recorded to the end, (with the
    console) two pages served, ``idle`` seconds, then its PSS."""
    workdir = Path(tempfile.mkdtemp(prefix="with-" if console else "without-", dir=root))
    db = workdir / "recorder.db"
    argv = [sys.executable, "-m", "recorder", "simulate", "--port", "0", "--sessions", "1"]
    sim = h.Child("simulator", [*argv, "--seed", "7", "--chunk-delay", "0.01"], workdir)
    recorder = None
    try:
        port = int(h.wait_for_log(sim, LISTENING, 30).group(1))
        config = h.recorder_config(port, f"sqlite:///{db}") + NO_PROXY
        if console:
            config += '[web]\nlisten = "127.0.0.1:0"\n'
        (path := workdir / "config.toml").write_text(config)
        args = [sys.executable, "-m", "recorder", "run", "--config", str(path)]
        recorder = h.Child("recorder", args, workdir, die_with_parent=True)
        h.wait_for_log(recorder, STARTED, 30)
        sid = wait_for("finished session", 60, lambda: (h.poll_row(db, FINISHED) or [None])[0])
        if console:
            found = wait_for("console URL in the log", 10, lambda: CONSOLE.search(recorder.log()))
            base = found.group(0)
            for page in ("/", "/sessions/" + quote(sid, safe="")):
                if (status := fetch(base, page)[1]) != 200:
                    raise h.BenchError(f"the service's console answered {page} with {status}")
        time.sleep(idle)
        recorder.check_alive()
        main = own_pss_kib(recorder.pid) / 1024
        return {"console": console, "pss_mb": pss_kib(recorder.pid) / 1024, "main_pss_mb": main}
    finally:
        if recorder is not None:
            recorder.stop(30)
        sim.stop()


def measure(root: Path, repeat: int, idle: float, quiet: bool) -> dict[str, Any]:
    """Both kinds ``repeat`` times; medians of the service's PSS (all its processes) and
    of its main process's (where the console runs), and their differences. A tree
    whose ``recorder run`` does not serve ``[web] listen`` yet is said, not failed."""
    kinds = {
        WITHOUT: lambda r: service(r, False, idle),
        WITH: lambda r: service(r, True, idle),
    }
    try:
        runs = h.alternate(repeat, root, kinds, quiet)
    except h.BenchError as exc:
        if "console URL" not in str(exc):
            raise
        return {"skipped": "recorder run does not serve [web] listen on this tree"}
    out: dict[str, Any] = {"runs": runs[WITHOUT] + runs[WITH]}
    for key in ("pss_mb", "main_pss_mb"):
        alone, beside = (
            h.median(r[key] for r in runs[WITHOUT]),
            h.median(r[key] for r in runs[WITH]),
        )
        out[key] = {"without": alone, "with": beside, "added": beside - alone}
    return out


def headline(memory: dict[str, Any]) -> dict[str, str]:
    if "skipped" in memory:
        return {"console's PSS": f"skipped: {memory['skipped']}"}
    total, main = memory["pss_mb"], memory["main_pss_mb"]
    return {
        "console's PSS": (
            f"+{total['added']:.1f} MB ({total['with']:.1f} with, {total['without']:.1f}"
            f" without; main process +{main['added']:.1f})"
        )
    }


def targets(memory: dict[str, Any]) -> dict[str, bool]:
    if "skipped" in memory:
        return {}
    return {f"console_pss_lt_{TARGET_ADDED_MB:.0f}MB": memory["pss_mb"]["added"] < TARGET_ADDED_MB}
