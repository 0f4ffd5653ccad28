"""The service's HTTP endpoints as someone on the network meets them: /metrics wants a
token on an address other machines reach, /health tells nothing about credentials."""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from click.testing import CliRunner

from recorder.capture.admission import metrics_refusal, metrics_token_wanted
from recorder.capture.handshake import origin
from recorder.cli import cli
from recorder.config import Config, ConfigError, load_config
from recorder.service.metrics import serve_metrics
from tests.conftest import running, write_config
from tests.proxy_peers import proxy_port

DEAD_DAEMON = "ws://127.0.0.1:9"


async def get(
    port: int, path: str, headers: Sequence[str] = ()
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 GET on 127.0.0.1: status, headers (lower-cased names), body."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    lines = [f"GET {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    raw = await reader.read()
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode().split("\r\n")
    fields = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        fields[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), fields, body


# --- pure parts -----------------------------------------------------------------


def test_who_may_read_metrics() -> None:
    assert metrics_token_wanted("0.0.0.0", None) and metrics_token_wanted("10.0.0.5", None)
    assert not metrics_token_wanted("127.0.0.1", None) and not metrics_token_wanted("::1", None)
    # Set, it is wanted on loopback too: it was set to be used.
    assert metrics_token_wanted("127.0.0.1", "m-tok")
    tokens = ("m-tok", "p-tok")
    assert metrics_refusal(None, tokens, wanted=False) is None
    assert metrics_refusal(None, tokens, wanted=True) == 401
    assert metrics_refusal("Bearer nope", tokens, wanted=True) == 401
    assert metrics_refusal("Basic bS10b2s=", tokens, wanted=True) == 401
    assert metrics_refusal("Bearer m-tok", tokens, wanted=True) is None
    assert metrics_refusal("bearer p-tok ", tokens, wanted=True) is None
    # Wanted, but nothing to present: a proxy open to everyone keeps its metrics.
    assert metrics_refusal("Bearer x", (None, None), wanted=True) == 403


def test_metrics_tokens_are_compared_in_constant_time_and_all_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    # The first token matching does not stop the comparison: time does not say which.
    assert metrics_refusal("Bearer m-tok", ("m-tok", "p-tok"), wanted=True) is None
    assert compared == [(b"m-tok", b"m-tok"), (b"m-tok", b"p-tok")]
    compared.clear()
    assert metrics_refusal("Bearer clé", ("clé",), wanted=True) is None
    assert compared == [("clé".encode(), "clé".encode())]


def test_origin_keeps_only_scheme_host_and_port() -> None:
    assert origin("ws://alice:pw@daemon:8787/ws?token=t&user=bob") == "ws://daemon:8787"
    assert origin("wss://alice@Daemon.example/x") == "wss://daemon.example"
    assert origin("ws://[::1]:8787/?apiKey=k") == "ws://[::1]:8787"


def test_a_remote_metrics_listen_needs_a_token(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"metrics": {"listen": "0.0.0.0:9464"}})
    with pytest.raises(
        ConfigError,
        match=r"metrics.listen: 0.0.0.0:9464 is reachable from other machines; "
        r"set metrics.token \(or RECORDER_METRICS_TOKEN\)$",
    ):
        load_config(cfg, env={})
    assert load_config(cfg, env={"RECORDER_METRICS_TOKEN": " m "}).metrics.token == "m"
    blank = write_config(
        tmp_path / "b.toml", {"metrics": {"listen": "0.0.0.0:9464", "token": "  "}}
    )
    with pytest.raises(ConfigError):
        load_config(blank, env={"RECORDER_METRICS_TOKEN": " "})
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and "metrics.token" in result.output
    token = write_config(
        tmp_path / "t.toml", {"metrics": {"listen": "[::]:9464", "token": "secret-m"}}
    )
    config = load_config(token, env={})
    assert config.metrics.token == "secret-m" and "secret-m" not in repr(config)
    assert load_config(write_config(tmp_path / "l.toml", {"metrics": {"listen": "[::1]:9"}}))


# --- over sockets ---------------------------------------------------------------


async def test_metrics_on_the_proxys_remote_port_want_a_token(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(
        DEAD_DAEMON,
        proxy={"listen": "0.0.0.0:0", "token": "p-secret"},
        metrics={"token": "m-secret"},
    )
    with structlog.testing.capture_logs() as logs:
        async with running(config) as svc:
            port = proxy_port(svc)
            status, headers, body = await get(port, "/metrics")
            assert status == 401 and headers["www-authenticate"].startswith("Bearer")
            assert b"recorder_" not in body
            for refused in (
                ["Authorization: Bearer wrong"],
                ["Authorization: p-secret"],
                ["Authorization: Basic cC1zZWNyZXQ="],
                ["Authorization: Bearer p-secre"],
            ):
                assert (await get(port, "/metrics", refused))[0] == 401, refused
            # Only the header: a token in the URL ends up in logs and histories.
            assert (await get(port, "/metrics?token=p-secret"))[0] == 401
            for token in ("p-secret", "m-secret"):
                status, _, body = await get(port, "/metrics", [f"Authorization: Bearer {token}"])
                assert status == 200 and b"recorder_frames_total" in body
            # /health stays open, as the daemon's is: UIs ask it before they connect.
            assert (await get(port, "/health"))[0] in (200, 503)
    assert "secret" not in repr(logs)


@pytest.mark.parametrize(
    ("proxy", "metrics", "expected"),
    [
        # metrics.token set is wanted, on loopback too.
        ({}, {"token": "m-secret"}, 401),
        # Open to every machine without a token: /metrics is not, whatever is sent.
        ({"listen": "0.0.0.0:0", "allow_remote_without_auth": True}, {}, 403),
    ],
)
async def test_when_metrics_want_a_token(
    make_config: Callable[..., Config],
    proxy: dict[str, Any],
    metrics: dict[str, Any],
    expected: int,
) -> None:
    async with running(make_config(DEAD_DAEMON, proxy=proxy, metrics=metrics)) as svc:
        assert (await get(proxy_port(svc), "/metrics"))[0] == expected
        if expected == 403:
            sent = ["Authorization: Bearer anything"]
            assert (await get(proxy_port(svc), "/metrics", sent))[0] == 403


async def test_the_metrics_listener_wants_its_own_token(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(
        DEAD_DAEMON,
        proxy={"token": "p-secret"},
        metrics={"listen": "0.0.0.0:9464", "token": "m-secret"},
    )
    async with running(config) as svc:
        # The listener the service starts when the proxy is off, on a free port here.
        server = await serve_metrics(svc.snapshot, "m-secret", "0.0.0.0", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            status, headers, body = await get(port, "/metrics")
            assert status == 401 and "www-authenticate" in headers and b"recorder_" not in body
            # The proxy's token opens the proxy, not this port.
            assert (await get(port, "/metrics", ["Authorization: Bearer p-secret"]))[0] == 401
            status, _, body = await get(port, "/metrics", ["authorization: Bearer m-secret"])
            assert status == 200 and b"recorder_frames_total" in body
            assert (await get(port, "/other", ["Authorization: Bearer m-secret"]))[0] == 404
        finally:
            server.close()


async def test_health_names_no_user_and_no_credential(
    make_config: Callable[..., Config],
) -> None:
    heads: list[bytes] = []

    async def daemon(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        body = b'{"status":"healthy","uptime":5}'
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(daemon, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    upstream = f"ws://alice:s3cret@127.0.0.1:{port}/ws?token=t0ken&user=bob"
    try:
        async with running(make_config(DEAD_DAEMON, proxy={"upstream": upstream})) as svc:
            status, _, raw = await get(proxy_port(svc), "/health")
    finally:
        server.close()
    body = json.loads(raw)
    assert status == 200 and body["status"] == "healthy" and body["uptime"] == 5
    assert body["recorder"]["upstream"] == f"ws://127.0.0.1:{port}"
    for secret in ("alice", "s3cret", "bob", "t0ken", "/ws"):
        assert secret not in raw.decode(), secret
    # The daemon was asked with a Host header, not with the URL's user and password.
    (head,) = heads
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in head
    assert b"alice" not in head and b"s3cret" not in head


async def test_database_bytes_counts_the_wal_as_status_does(
    make_config: Callable[..., Config], db_path: Path
) -> None:
    """recorder_database_bytes read the file's pages alone: 241 664 bytes where `status`
    counted 3.1 MiB with the WAL. Both count the file, its -wal and its -shm now."""
    from recorder.db.readonly import files_bytes
    from recorder.protocol.frames import IN, Frame

    async with running(make_config(DEAD_DAEMON)) as svc:
        cid = await svc.writer.open_connection("link", DEAD_DAEMON)
        for seq in range(1, 201):
            await svc.writer.put(Frame(cid, seq, IN, seq, seq, True, b'{"type":"x"}' * 50))
        await svc.writer.flush()
        wal = Path(f"{db_path}-wal").stat().st_size
        before = files_bytes(db_path)
        await svc.refresh()  # what the service does every few seconds
        after = files_bytes(db_path)
        _, _, body = await get(proxy_port(svc), "/metrics")
        status = json.loads(
            CliRunner().invoke(cli, ["status", "--database", str(db_path), "--json"]).stdout
        )
    (line,) = [ln for ln in body.decode().splitlines() if ln.startswith("recorder_database_bytes")]
    reported = int(float(line.split()[1]))
    assert wal > 0 and db_path.stat().st_size < before
    # Files only grow while nothing is purged: the checkpoint fills the file, the WAL
    # starts over only at its limit.
    assert before <= reported <= after <= status["database_bytes"]
