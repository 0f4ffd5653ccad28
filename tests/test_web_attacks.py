"""Attacks on the web console from a daemon's frames and from HTTP clients: hostile
ids, types and payloads on every route, the token's redirect, clients that connect and
never finish asking, and many slow reads at once.

Real parts: recordings written by the writer's own code, the real `recorder web` as a
subprocess on 127.0.0.1, raw sockets and plain HTTP requests."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from email.message import Message
from pathlib import Path
from urllib.parse import quote, urlsplit

import psutil

from recorder.web.app import MOST_READS
from recorder.web.connections import MAX_CONNECTIONS, REQUEST_TIMEOUT
from tests.cleanup_scripts import SECOND, chunk, status
from tests.web_console import get, served, session_frame, write

# Ids a daemon may send, each an attack on a path, a query, a header or a page.
IDS = ["a/b", "a%2Fb", "..", "q?x=1", "h#f", "nl\nx\r\ny", "<script>x</script>", "x" * 10_000]


def hostile_recording(db: Path) -> None:
    frames = []
    for sid in IDS:
        frames += [
            session_frame(sid, "running", "<b>o</b>", "task"),
            chunk(sid, "text \x00 <i>"),
            json.dumps({"type": "<img src=x onerror=1>", "sessionId": sid}).encode(),
            status(sid, "completed"),
        ]
    frames += [b'{"type":"stream_chunk","data":{"sessionId":"a/b","chunk":"\xff\xfe"}}']
    frames += [b"\x00\x01 binary", chunk("a/b", "y" * (2 * 1024 * 1024))]
    write(db, [((i + 1) * SECOND, "in", f) for i, f in enumerate(frames)])


def status_of(url: str) -> tuple[int, Message]:
    """The status and headers of a GET, whatever bytes its body holds."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return response.status, response.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers


def port_of(url: str) -> int:
    return urlsplit(url).port or 80


def test_hostile_ids_types_and_payloads_never_make_a_500_or_a_slow_page(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    hostile_recording(db)
    routes = ["/", "/api/sessions", "/frames", "/api/frames", "/frames.jsonl", "/live"]
    routes += ["/stats", "/api/stats", "/frames?grep=.*", "/api/frames?limit=99999"]
    for sid in IDS:
        e = quote(sid, safe="")
        routes += [f"/sessions/{e}", f"/sessions/{e}/replay"]
        routes += [f"/api/sessions/{e}{w}" for w in ("", "/replay", "/markers", "/frames")]
        routes += [f"/api/sessions/{e}/search?q=%5B.*", f"/api/sessions/{e}/frames?format=jsonl"]
    with served(db) as url:
        frame_count = len(json.loads(get(url + "/api/frames?limit=1000")[2])["frames"])
        routes += [f"/frames/{i}{w}" for i in range(1, frame_count + 1) for w in ("", "/raw")]
        for route in routes:
            start = time.monotonic()
            code, headers = status_of(url + route)
            assert code in (200, 404), (code, route)
            assert time.monotonic() - start < 2, route
            assert "\n" not in str(headers.get("Content-Disposition", "")), route


def test_a_lone_surrogate_a_json_escapes_is_shown_escaped_not_a_500(tmp_path: Path) -> None:
    """JSON may escape a lone surrogate, which no UTF-8 page can carry: pretty-printed
    as it was, the frame's page failed with a 500 and a traceback."""
    db = tmp_path / "r.db"
    raw = rb'{"type":"stream_chunk","data":{"sessionId":"s","chunk":"a\ud800b","\udc00":1}}'
    write(db, [(SECOND, "in", raw)])
    with served(db) as url:
        code, _, page = get(url + "/frames/1")
        assert code == 200, page
        assert "a\\ud800b" in page and "\\udc00" in page
        assert get(url + "/api/frames")[0] == 200


def test_the_token_redirect_keeps_the_path_as_sent_and_on_this_site(tmp_path: Path) -> None:
    """``?token=`` redirects to the same URL: for a session id with an encoded slash
    that was another page (the path was decoded); never to another site."""
    db = tmp_path / "r.db"
    write(db, [(SECOND, "in", session_frame("a/b", "running", "o", "d"))])
    token = "s3cret-token"
    redirects = {
        "/sessions/a%2Fb/replay": "/sessions/a%2Fb/replay",
        "//evil.example/x": "/evil.example/x",
        "/\\evil.example": "/%5Cevil.example",
        "/%2F%2Fevil.example": "/%2F%2Fevil.example",
        "/%0d%0aSet-Cookie:%20x=1": "/%0d%0aSet-Cookie:%20x=1",
    }
    with served(db, env={"RECORDER_WEB_TOKEN": token}, secret=token) as url:
        for path, where in redirects.items():
            code, headers, _ = get(url + path + "?token=" + token)
            assert code == 303 and headers["Location"] == where, (path, headers["Location"])
            assert "x=1" not in str(headers.get_all("Set-Cookie"))
        code, headers, _ = get(url + "/sessions/a%2Fb?token=" + token)
        cookie = headers["Set-Cookie"].split(";")[0]
        code, _, page = get(url + headers["Location"], Cookie=cookie)
        assert code == 200 and "a/b" in page
        for path in ("/static/player.js", "/api/live", "/frames/1/raw", "/nowhere"):
            for method in ("GET", "HEAD"):
                assert get(url + path, method)[0] == 401, (path, method)


def test_a_client_that_never_finishes_asking_is_cut_and_connections_are_bounded(
    tmp_path: Path,
) -> None:
    """uvicorn kept a connection that sent nothing, or half a request, for ever, and
    took as many as came: in `recorder run`, the service's file descriptors."""
    db = tmp_path / "r.db"
    write(db, [(SECOND, "in", session_frame("s", "running", "o", "d"))])
    with served(db) as url:
        address = ("127.0.0.1", port_of(url))
        silent = socket.create_connection(address)
        half = socket.create_connection(address)
        half.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        again = socket.create_connection(address)
        again.sendall(b"GET /api/sessions HTTP/1.1\r\nHost: x\r\n\r\n")
        again.settimeout(5)
        assert again.recv(12) == b"HTTP/1.1 200"
        again.sendall(b"GET / HTTP/1.1\r\n")  # the second request, half
        crowd = [socket.create_connection(address) for _ in range(MAX_CONNECTIONS)]
        try:
            start = time.monotonic()
            for sock in (silent, half, again):
                sock.settimeout(REQUEST_TIMEOUT + 5)
                while sock.recv(65536):
                    pass  # what is left of the first answer, then the end
            assert time.monotonic() - start < REQUEST_TIMEOUT + 3
            cut = 0
            for sock in crowd:
                sock.settimeout(REQUEST_TIMEOUT + 5)
                cut += sock.recv(1) == b""
            assert cut >= 3  # past the bound, closed at once (the rest timed out after)
        finally:
            for sock in [silent, half, again, *crowd]:
                sock.close()
        assert get(url + "/api/sessions")[0] == 200


def test_many_slow_reads_at_once_run_a_few_at_a_time(tmp_path: Path) -> None:
    """Each read of a session may hold its largest frame, parsed: thirty searches at
    once ran in thirty threads (1.9 GB on a session with a 50 MiB frame)."""
    db = tmp_path / "r.db"
    frames = [status("big", "running")] + [chunk("big", "z" * 1024 * 1024) for _ in range(8)]
    write(db, [((i + 1) * SECOND, "in", f) for i, f in enumerate(frames)])
    with served(db) as url:
        pid = next(
            c.pid for c in psutil.net_connections("tcp") if c.laddr and c.laddr.port == port_of(url)
        )
        before = psutil.Process(pid).num_threads()
        with ThreadPoolExecutor(24) as pool:
            codes = list(
                pool.map(lambda _: get(url + "/api/sessions/big/search?q=qq")[0], range(24))
            )
        assert codes == [200] * 24
        # Idle worker threads stay a while: their count is the most that ran at once.
        assert psutil.Process(pid).num_threads() <= before + MOST_READS
