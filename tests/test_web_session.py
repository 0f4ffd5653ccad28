"""A session's page: its timeline strip (a lane per recorded type, the gap between two
link connections shaded, a time axis), its links, and hostile text shown as text.

Real parts: frames written by the writer's own code on two link connections with a
gap between them, the real `recorder web` as a subprocess, real HTTP requests."""

from __future__ import annotations

import json
import re
from pathlib import Path

from recorder.db.recordings import Recordings
from recorder.db.strip_reads import StripCount
from recorder.protocol.story import Gap
from recorder.web.charts import LANES, OTHERS, strip
from tests.cleanup_scripts import SECOND, chunk, status
from tests.web_console import CSP, HOSTILE, get, served, session_frame
from tests.web_recordings import Link, url_of, write_links

T = 1_700_000_000 * SECOND


def gapped(sid: str) -> list[Link]:
    """30 s of frames, a 50 s gap with no connection up, 30 s more."""
    first = [(T, "in", status(sid, "running"))]
    first += [(T + i * SECOND, "in", chunk(sid, f"a{i}")) for i in range(1, 30)]
    first += [
        (T + 5 * SECOND, "in", json.dumps({"type": h, "sessionId": sid}).encode()) for h in HOSTILE
    ]
    second = [(T + (100 + i) * SECOND, "in", chunk(sid, f"b{i}")) for i in range(30)]
    second += [(T + 131 * SECOND, "in", status(sid, "completed"))]
    return [Link(T - SECOND, T + 40 * SECOND, first), Link(T + 90 * SECOND, None, second)]


def lanes(html: str) -> list[str]:
    return re.findall(r'<g class="lane lane-\d" data-type="([^"]*)"', html)


def test_the_strip_has_a_lane_per_type_and_the_gap_shaded(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write_links(db, gapped("s/1"))
    with served(db) as url:
        code, headers, html = get(url + "/sessions/s%2F1")
        assert code == 200 and headers["Content-Security-Policy"] == CSP
    assert lanes(html)[:2] == ["stream_chunk", "session_status_update"]
    assert len(lanes(html)) == 2 + len(HOSTILE)
    # The gap: 40 s to 90 s of a strip from 0 s to 131 s, across every lane.
    [gap] = re.findall(r'<rect class="gap" x="([\d.]+)" y="0" width="([\d.]+)"', html)
    x0, plot = 170, 1000 - 170
    assert abs(float(gap[0]) - (x0 + plot * 40 / 131)) < 1  # from the first frame, at T
    assert abs(float(gap[1]) - plot * 50 / 131) < 1
    assert "gap, nothing recording: 50.0 s" in html
    # 59 chunks in 200 buckets of 0.655 s: one bar each.
    chunks = html.split('data-type="stream_chunk"')[1].split("</g>")[0]
    assert chunks.count("<rect ") == 59
    ticks = re.findall(r'text-anchor="middle">(\d\d:\d\d:\d\d)</text>', html)
    assert ticks[:2] == ["22:13:30", "22:14:00"]
    assert 'href="/sessions/s%2F1/replay"' in html
    assert 'href="/frames?session=s%2F1"' in html and 'href="/api/sessions/s%2F1"' in html


def test_hostile_text_on_the_session_page_is_text(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    sid = HOSTILE[0]
    links = gapped(sid)
    extra = [(T + 2 * SECOND, "in", session_frame(sid, h, h, h)) for h in HOSTILE]
    write_links(
        db, [Link(links[0].opened_us, links[0].closed_us, [*links[0].script, *extra]), links[1]]
    )
    with served(db) as url:
        code, _, html = get(url + "/sessions/%3Cscript%3Ealert%281%29%3C%2Fscript%3E")
    assert code == 200
    assert "<script" not in html and '" onerror="' not in html and ">49<" not in html
    assert 'href="javascript:' not in html
    for h in ("&lt;script&gt;alert(1)&lt;/script&gt;", "&#34; onerror=&#34;x", "{{7*7}}"):
        assert f'data-type="{h}"' in html  # the lane's type, and its name drawn
    assert "javascript:alert(1)</text>" in html
    assert 'href="/frames?session=%3Cscript%3Ealert%281%29%3C%2Fscript%3E"' in html


def test_the_strips_counts_come_from_sql_over_the_session_alone(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    write_links(
        db,
        [
            *gapped("mine"),
            Link(T + 200 * SECOND, None, [(T + 50 * SECOND, "in", chunk("other", "x"))]),
        ],
    )
    with Recordings.open(url_of(db)) as r:
        counts = r.frame_strip("mine", T, T + 100 * SECOND, 10)
    by = {(c.type, c.bucket): c.frames for c in counts}
    assert by[("stream_chunk", 0)] == 9 and by[("stream_chunk", 2)] == 10
    # Frames past the end are counted in the last bucket, the other session's in none.
    assert by[("stream_chunk", 9)] == 30 and by[("session_status_update", 9)] == 1
    assert sum(c.frames for c in counts) == 1 + 29 + len(HOSTILE) + 31


def test_a_thousand_types_are_lanes_of_the_most_frequent_and_one_of_the_rest() -> None:
    counts = [StripCount(f"t{i:04d}", i % 200, 1 + (i < 5) * 10, 1) for i in range(1000)]
    drawn = strip(counts, [Gap(T, T + SECOND)], T, T + 10 * SECOND)
    assert len(drawn.lanes) == LANES and drawn.lanes[-1].name == OTHERS
    assert [lane.name for lane in drawn.lanes[:5]] == ["t0000", "t0001", "t0002", "t0003", "t0004"]
    assert sum(lane.frames for lane in drawn.lanes) == 1000 + 50
    assert len(drawn.shades) == 1 and drawn.ticks
