"""The live daemon a replay plays against (``replay --against``): its URL checked, and
the connection dialled with the recorder's credentials."""

from __future__ import annotations

from typing import Any

from websockets.datastructures import Headers
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
from websockets.uri import parse_uri

from recorder.addresses import redact_url
from recorder.capture.dial import Dialer
from recorder.capture.handshake import USER_AGENT
from recorder.config import Config


class LiveReplayError(Exception):
    """The replay could not start (daemon unreachable or refusing, database writer)."""


def check_url(url: str) -> None:
    """LiveReplayError unless ``url`` is a ws:// or wss:// URL websockets can dial."""
    try:
        parse_uri(url)
    except (ValueError, InvalidURI) as exc:
        # websockets names the URL in some of its messages: never with its secrets.
        reason = str(exc).replace(url, redact_url(url))
        raise LiveReplayError(f"not a daemon URL (ws://HOST:PORT): {reason}") from None


async def dial(config: Config, url: str) -> Any:
    dialer = Dialer(config.daemon, url)
    try:
        return await dialer.dial(
            url,
            additional_headers=dialer.add_credentials(Headers()),
            user_agent_header=USER_AGENT,
            compression=None,
            close_timeout=5,
        )
    except InvalidStatus as exc:
        body = (exc.response.body or b"").decode(errors="replace")[:200]
        error = f"refused: HTTP {exc.response.status_code} {body}"
    except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ValueError) as exc:
        error = str(exc) or type(exc).__name__
    raise LiveReplayError(f"cannot replay to {redact_url(url)}: {error}")
