"""The daemon's handshake authentication: a bearer token, an API key, or either."""

from __future__ import annotations

import hmac

from websockets.datastructures import Headers

from recorder.capture.handshake import bearer


def authenticate(
    token: str | None,
    api_key: str | None,
    headers: Headers,
    query: dict[str, list[str]],
) -> str | None:
    """Return the daemon's error code for a rejected handshake, or None to accept.

    When both a token and an API key are configured, either credential suffices.
    """
    if not token and not api_key:
        return None
    presented_token = bearer(headers)
    if "Authorization" not in headers and query.get("token"):
        presented_token = query["token"][0]
    keys = headers.get_all("x-api-key")
    presented_key = keys[0] if keys else None
    if presented_key is None and query.get("apiKey"):
        presented_key = query["apiKey"][0]

    if token and presented_token is not None and _same(presented_token, token):
        return None
    if api_key and presented_key is not None and _same(presented_key, api_key):
        return None
    if (not token or presented_token is None) and (not api_key or presented_key is None):
        return "credentials_missing"
    if token and presented_token is not None:
        return "jwt_invalid"
    return "api_key_invalid"


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())
