"""The console's frames (`/frames`, `/api/frames`, `/frames/{id}`, the JSONL download):
paged by key both ways, filtered as `recorder frames` filters, each payload shown
bounded, the download byte for byte what `recorder frames --format jsonl` prints.

Real parts: recordings written by the writer's own code, the real `recorder web` as a
subprocess, real HTTP requests, and `recorder frames` through its CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from recorder.cli import cli
from recorder.pipeline.classifier import Classifier
from tests.cleanup_scripts import SECOND, chunk, open_db
from tests.web_console import CSP, HOSTILE, get, served, session_frame

# (received, direction, is_text, frame)
Mixed = list[tuple[int, str, bool, bytes]]


async def record_mixed(url: str, frames: Mixed) -> None:
    """Text and binary frames, one batch of the writer's own code on one connection."""
    db, store, cid = await open_db(url)
    try:
        batch = [
            (cid, seq, d, at, seq, text, data) for seq, (at, d, text, data) in enumerate(frames, 1)
        ]
        rows, index = Classifier().rows_and_index(batch)
        await db.run(store.write_batch, rows, index)
    finally:
        await db.shutdown()


def write_mixed(db: Path | str, frames: Mixed) -> None:
    url = (
        f"sqlite:///{db}"
        if isinstance(db, Path)
        else db.replace("postgresql://", "postgresql+asyncpg://")
    )
    asyncio.run(record_mixed(url, frames))


def cli_frames(db: Path | str, *args: str, fmt: str = "json") -> str:
    done = CliRunner().invoke(
        cli, ["frames", "--database", str(db), "--format", fmt, "--limit", "0", *args]
    )
    assert done.exit_code == 0, done.output
    return done.stdout


def api(url: str) -> dict[str, Any]:
    code, headers, body = get(url)
    assert code == 200 and headers["Content-Type"] == "application/json", body
    page: dict[str, Any] = json.loads(body)
    return page


def walk(url: str, path: str, key: str = "after") -> list[dict[str, Any]]:
    """Every frame of a filter, page by page along ``key`` (after: forwards)."""
    seen: list[dict[str, Any]] = []
    link = path
    while True:
        page = api(url + link)
        seen = seen + page["frames"] if key == "after" else page["frames"] + seen
        nxt = page["next_after" if key == "after" else "prev_before"]
        if nxt is None:
            return seen
        link = (
            re.sub(rf"([?&]){key}=\d+", "", path) + ("&" if "?" in path else "?") + f"{key}={nxt}"
        )


def mixed_recording() -> Mixed:
    frames: Mixed = []
    for i in range(1, 241):
        sid = f"s{i % 3}"
        frame = (
            session_frame(sid, "running", "o", f"job {i}")
            if i % 7 == 0
            else chunk(sid, f"täxt {i}")
        )
        frames.append((i * SECOND, "in" if i % 2 else "out", True, frame))
    frames.append((241 * SECOND, "in", False, bytes(range(256)) * 2))
    frames.append((242 * SECOND, "out", True, b"\xff\xfe not utf-8"))
    frames.append((243 * SECOND, "in", True, b"plain text, not JSON \x00 with a NUL"))
    return frames


def test_pages_by_key_both_ways_and_filters_as_the_cli(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write_mixed(db, mixed_recording())
    everything = json.loads(cli_frames(db))
    assert len(everything) == 243
    with served(db) as url:
        assert walk(url, "/api/frames?limit=50") == everything
        assert walk(url, "/api/frames?limit=50&newest=1", key="before") == everything
        first = api(url + "/api/frames")
        assert len(first["frames"]) == 100 and first["prev_before"] is None
        assert first["next_after"] == 100
        middle = api(url + "/api/frames?after=100&limit=10")
        assert [f["id"] for f in middle["frames"]] == list(range(101, 111))
        assert middle["prev_before"] == 101 and middle["next_after"] == 110
        back = api(url + "/api/frames?before=101&limit=10")
        assert [f["id"] for f in back["frames"]] == list(range(91, 101))
        assert back["prev_before"] == 91 and back["next_after"] == 100

        for args, query in [
            (["--session", "s1", "--direction", "out"], "session=s1&direction=out"),
            (
                ["--type", "session_status_update", "--since", "1970-01-01T00:01:00Z"],
                "type=session_status_update&since=1970-01-01T00:01:00Z",
            ),
            (["--grep", "xt 1", "--connection", "1"], "grep=xt+1&connection=1"),
            (
                ["--session", "s2", "--until", "1970-01-01T00:02:00Z"],
                "session=s2&until=1970-01-01T00:02:00Z",
            ),
        ]:
            wanted = json.loads(cli_frames(db, *args))
            assert wanted and walk(url, f"/api/frames?{query}&limit=7") == wanted, query
            assert walk(url, f"/api/frames?{query}&limit=7&newest=1", key="before") == wanted
        of_s1 = api(url + "/api/sessions/s1/frames?direction=in&limit=500")["frames"]
        assert of_s1 == json.loads(cli_frames(db, "--session", "s1", "--direction", "in"))

        code, headers, table = get(url + "/frames?session=s0&direction=out&limit=5")
        assert code == 200 and headers["Content-Security-Policy"] == CSP
        ids = re.findall(r'<a href="/frames/(\d+)">', table)
        assert ids == ["6", "12", "18", "24", "30"]
        assert table.count(">→<") == 5 and ">←<" not in table
        assert table.count('<a href="/sessions/s0">s0</a>') == 5
        later = re.search(r'rel="next" href="([^"]*)"', table)
        assert later is not None and "after=30" in later.group(1)
        _, _, second = get(url + later.group(1).replace("&amp;", "&"))
        assert re.findall(r'<a href="/frames/(\d+)">', second)[:2] == ["36", "42"]
        assert 'href="/frames.jsonl?session=s0&amp;direction=out&amp;limit=5"' in table


def test_payload_pretty_json_text_hex_and_a_bounded_page_for_a_large_frame(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    big = bytes(i % 251 for i in range(3 * 1024 * 1024))
    huge_text = ("x" * 1023 + "\n") * 2048  # 2 MiB of text
    write_mixed(
        db,
        [
            (SECOND, "in", True, session_frame("s1", "running", "o", "a <b>job</b>")),
            (2 * SECOND, "in", False, b"\x00\x01binary\xff" * 3),
            (3 * SECOND, "out", True, b"not {json"),
            (4 * SECOND, "in", False, big),
            (5 * SECOND, "in", True, huge_text.encode()),
            (6 * SECOND, "in", True, b"\xff\xfe not utf-8"),
        ],
    )
    with served(db) as url:
        code, _, page = get(url + "/frames/1")
        assert (
            code == 200
            and '<pre class="payload json">{\n  &#34;type&#34;: &#34;session_status_update&#34;'
            in page
        )
        assert "a &lt;b&gt;job&lt;/b&gt;" in page and "<b>" not in page
        _, _, page = get(url + "/frames/2")
        assert (
            "00000000  00 01 62 69 6e 61 72 79 ff 00 01 62 69 6e 61 72  |..binary...binar|" in page
        )
        assert base64.b64encode(b"\x00\x01binary\xff" * 3).decode() in page
        _, _, page = get(url + "/frames/3")
        assert '<pre class="payload text">not {json</pre>' in page
        code, _, page = get(url + "/frames/4")
        assert code == 200 and len(page) < 200_000
        assert "Showing the first 16,384 of 3,145,728 bytes" in page
        _, _, page = get(url + "/frames/5")
        assert len(page) < 400_000 and "of 2,097,152 bytes" in page
        _, _, page = get(url + "/frames/6")
        assert "ff fe 20 6e 6f 74" in page and "not utf-8" in page

        with urllib.request.urlopen(url + "/frames/4/raw", timeout=30) as response:
            assert response.headers["Content-Type"] == "application/octet-stream"
            assert response.headers["Content-Disposition"] == 'attachment; filename="frame-4.bin"'
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert response.read() == big
        with urllib.request.urlopen(url + "/frames/5/raw", timeout=30) as response:
            assert response.read() == huge_text.encode()
        assert get(url + "/frames/99")[0] == 404 and get(url + "/frames/99/raw")[0] == 404


def test_jsonl_download_is_the_cli_output_byte_for_byte(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    frames = mixed_recording()
    frames += [
        (300 * SECOND + i, "in", True, session_frame(h, "running", h, h))
        for i, h in enumerate(HOSTILE)
    ]
    said = {"type": "stream_chunk", "data": {"sessionId": "s1", "chunk": 'a\nb \u2028 "q" é'}}
    frames += [(400 * SECOND, "out", True, json.dumps(said, ensure_ascii=False).encode())]
    write_mixed(db, frames)
    with served(db) as url:
        for args, query in [
            ([], ""),
            (["--session", "s1"], "session=s1"),
            (["--direction", "in", "--type", "stream_chunk"], "direction=in&type=stream_chunk"),
            (["--session", HOSTILE[0]], "session=" + urllib.parse.quote(HOSTILE[0])),
            (["--grep", "job 1"], "grep=job+1"),
        ]:
            wanted = cli_frames(db, *args, fmt="jsonl").encode()
            assert wanted
            with urllib.request.urlopen(f"{url}/frames.jsonl?{query}", timeout=30) as response:
                assert (
                    response.headers["Content-Disposition"] == 'attachment; filename="frames.jsonl"'
                )
                assert response.read() == wanted, query
            with urllib.request.urlopen(
                f"{url}/api/frames?format=jsonl&{query}", timeout=30
            ) as response:
                assert response.read() == wanted
        wanted = cli_frames(db, "--session", "s2", "--limit", "5", fmt="jsonl").encode()
        with urllib.request.urlopen(
            f"{url}/api/sessions/s2/frames?format=jsonl&limit=5", timeout=30
        ) as r:
            assert r.read() == wanted


def test_bad_parameters_are_400_in_one_line(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write_mixed(
        db,
        [
            (SECOND, "in", True, session_frame("s1", "running", "o", "d")),
            (SECOND, "in", True, session_frame("s10", "running", "o", "d")),
        ],
    )
    with served(db) as url:
        for path in [
            "/frames?after=x",
            "/frames?before=0",
            "/frames?after=1&before=5",
            "/frames?limit=-1",
            "/frames?direction=sideways",
            "/frames?since=nonsense",
            "/frames?connection=1.5",
            "/frames?since=2h&until=3h",
            "/frames?after=99999999999999999999",
            "/api/frames?until=x",
            "/api/frames?format=jsonl&after=y",
            "/frames.jsonl?direction=up",
            "/api/sessions/s1/frames?before=q",
            "/frames/abc",
            "/frames/0/raw",
            "/frames/-1",
        ]:
            code, _, body = get(url + path)
            assert code == 400, path
            said = re.sub(r"(?s).*<p class=\"error\">(.*)</p>.*", r"\1", body).strip()
            assert len(said.splitlines()) == 1 and "Traceback" not in body, (path, body)
        # "s1" is a session and the start of another: the exact id wins, as in the CLI
        assert get(url + "/frames?session=s")[0] == 400


def test_postgresql_pages_and_downloads_as_the_cli(pg_url: str) -> None:
    write_mixed(pg_url, mixed_recording())
    with served(pg_url) as url:
        everything = json.loads(cli_frames(pg_url))
        assert walk(url, "/api/frames?limit=40") == everything
        assert walk(url, "/api/frames?direction=out&limit=40&newest=1", key="before") == [
            f for f in everything if f["direction"] == "out"
        ]
        with urllib.request.urlopen(url + "/frames.jsonl?session=s1", timeout=30) as response:
            assert response.read() == cli_frames(pg_url, "--session", "s1", fmt="jsonl").encode()
        _, _, page = get(url + "/frames/241")
        assert "00000000  00 01 02 03" in page
