"""Who the recording proxy lets in, and with which credentials: the proxy's own token,
the daemon's passed through or lent, never leaked."""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from pathlib import Path
from typing import TypedDict

import pytest
import structlog
from click.testing import CliRunner
from websockets.asyncio.client import connect
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus

from recorder.capture.admission import admit
from recorder.cli import cli
from recorder.config import Config, ConfigError, load_config
from recorder.simulator import Simulator, SimulatorOptions
from tests.conftest import running, write_config
from tests.helpers import query, wait_until
from tests.proxy_peers import Upstream, closed_conversations, proxy_url


def test_admit() -> None:
    h = Headers({"Authorization": "Bearer p-tok"})
    assert admit(None, h, [("a", "1")]).reject is None
    ok = admit("p-tok", h, [("token", "daemon")])
    assert ok.reject is None and ok.strip_authorization and ok.query == [("token", "daemon")]
    via_query = admit(
        "p-tok", Headers({"Authorization": "Bearer daemon"}), [("token", "p-tok"), ("x", "1")]
    )
    assert (
        via_query.reject is None
        and not via_query.strip_authorization
        and via_query.query == [("x", "1")]
    )
    assert admit("p-tok", Headers(), []).reject == (401, "credentials_missing")
    assert admit("p-tok", Headers({"Authorization": "Bearer nope"}), []).reject == (
        401,
        "proxy_token_invalid",
    )


def test_non_loopback_listen_needs_a_token(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", {"proxy": {"listen": "0.0.0.0:8788"}})
    with pytest.raises(
        ConfigError, match=r"proxy.listen: 0.0.0.0:8788 is reachable from other machines"
    ):
        load_config(cfg, env={})
    assert load_config(cfg, env={"RECORDER_PROXY_TOKEN": "t"}).proxy.token == "t"
    result = CliRunner().invoke(cli, ["run", "--config", str(cfg)])
    assert result.exit_code == 2 and "proxy.token" in result.output
    allowed = write_config(
        tmp_path / "d.toml",
        {"proxy": {"listen": "0.0.0.0:8788", "allow_remote_without_auth": True}},
    )
    assert load_config(allowed, env={}).proxy.listen == "0.0.0.0:8788"
    local = write_config(tmp_path / "e.toml", {"proxy": {"listen": "[::1]:8788"}})
    assert load_config(local, env={}).proxy.host == "::1"


class HeaderOptions(TypedDict, total=False):
    """The ``connect()`` options a test passes through ``**kwargs``."""

    additional_headers: dict[str, str]


async def test_credentials_pass_through_and_upstream_rejections_reach_the_client(
    make_config: Callable[..., Config],
) -> None:
    opts = SimulatorOptions(port=0, token="daemon-tok", api_key="daemon-key")
    async with Simulator(opts) as sim, running(make_config(sim.url)) as svc:
        cases: list[tuple[HeaderOptions, str]] = [
            ({"additional_headers": {"Authorization": "Bearer daemon-tok"}}, "/"),
            ({"additional_headers": {"x-api-key": "daemon-key"}}, "/"),
            ({}, "/?token=daemon-tok"),
            ({}, "/?apiKey=daemon-key"),
        ]
        for kwargs, path in cases:
            async with connect(proxy_url(svc, path), **kwargs) as ws:
                assert json.loads(await ws.recv())["type"] == "health_check_response"
        with pytest.raises(InvalidStatus) as err:
            async with connect(proxy_url(svc)):
                pass
        assert err.value.response.status_code == 401
        assert json.loads(err.value.response.body) == {"error": "credentials_missing"}
        with pytest.raises(InvalidStatus) as err:
            async with connect(proxy_url(svc, "/?token=wrong")):
                pass
        assert err.value.response.status_code == 401 and b"error" in err.value.response.body


async def test_inject_auth_replaces_client_credentials(make_config: Callable[..., Config]) -> None:
    async with Simulator(SimulatorOptions(port=0, token="daemon-tok")) as sim:
        config = make_config(
            sim.url,
            daemon={"token": "daemon-tok"},
            proxy={"inject_auth": True, "token": "proxy-tok"},
        )
        async with running(config) as svc:
            # A client presenting the proxy's token is lent the recorder's credentials...
            async with connect(proxy_url(svc) + "?token=proxy-tok") as ws:
                assert json.loads(await ws.recv())["type"] == "health_check_response"
            # ...and one without it gets nothing of them.
            with pytest.raises(InvalidStatus) as caught:
                async with connect(proxy_url(svc)):
                    pass
            assert caught.value.response.status_code == 401


async def test_proxy_token_is_enforced_and_never_leaks(make_config: Callable[..., Config]) -> None:
    secret = "proxy-SECRET-9"
    with structlog.testing.capture_logs() as logs:
        async with Upstream() as up:
            config = make_config(up.url, proxy={"token": secret})
            async with running(config) as svc:
                for path, headers in [
                    ("/", {}),
                    ("/?token=nope", {}),
                    ("/", {"Authorization": "Bearer nope"}),
                ]:
                    with pytest.raises(InvalidStatus) as err:
                        async with connect(proxy_url(svc, path), additional_headers=headers):
                            pass
                    assert err.value.response.status_code == 401
                async with connect(
                    proxy_url(svc), additional_headers={"Authorization": f"Bearer {secret}"}
                ) as ui:
                    await ui.recv()
                async with connect(
                    proxy_url(svc, f"/?token={secret}&session=1"),
                    additional_headers={"Authorization": "Bearer daemon-jwt"},
                ) as ui:
                    await ui.recv()
                await wait_until(svc, lambda: closed_conversations(svc, 2))
                urls = [r.url for r in await query(svc, "select url from connections")]
    assert len(up.requests) == 3  # the passive link, then the two admitted clients
    (p1, h1), (p2, h2) = up.requests[1:]
    assert "Authorization" not in h1 and secret not in p1
    assert p2 == "/?session=1" and h2["Authorization"] == "Bearer daemon-jwt"
    assert secret not in repr(logs) and not any(secret in u for u in urls)


def test_the_proxy_token_is_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert admit("p-tok", Headers({"Authorization": "Bearer p-tok"}), []).trusted
    assert compared == [(b"p-tok", b"p-tok")]
    compared.clear()
    ok = admit("p-tok", Headers(), [("a", "1"), ("token", "p-tok")])
    assert ok.reject is None and ok.query == [("a", "1")] and (b"p-tok", b"p-tok") in compared
    compared.clear()
    bad = admit("p-tok", Headers({"Authorization": "Bearer p-tol"}), [("token", "p-tom")])
    assert bad.reject == (401, "proxy_token_invalid")
    assert compared == [(b"p-tol", b"p-tok"), (b"p-tom", b"p-tok")]
    # Not only ASCII: compared as bytes, never a TypeError.
    assert admit("clé", Headers({"Authorization": "Bearer clé"}), []).trusted
    assert admit("clé", Headers({"Authorization": "Bearer cle"}), []).reject is not None
