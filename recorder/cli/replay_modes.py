"""``recorder replay --serve`` and ``recorder replay --against ws://``: the I/O-heavy modes,
kept apart from terminal playback so that a plain replay loads neither."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from typing import Any

import click

from recorder.addresses import is_loopback, split_listen
from recorder.cli.options import Target, reading, running_recorder
from recorder.protocol.tame import on_one_line


def serve_or_replay_live(
    target: Target,
    session: str,
    *,
    serve: str | None,
    daemon: str | None,
    connection: int | None,
    pace: Any,
    wait_for_client: bool,
    loop: bool,
    as_json: bool,
) -> None:
    from recorder.replay import source

    # The address first: a typo must not cost reading a long session (nor, live,
    # starting the writer, which migrates the database).
    address = _listen_address(target, serve) if serve is not None else None
    if daemon is not None:
        _check_daemon_url(daemon)
        _alone(target)
    with reading(target) as reader:
        plan = source.open_session(reader, session, connection)
        if serve is not None and address is not None:
            # Served as it is read: the reader stays open while the server runs.
            recorded: Any = source.Stream(reader, plan, requests=wait_for_client)
            try:
                _serve(target, serve, address, plan, recorded, pace, wait_for_client, loop)
            finally:
                recorded.close()
            return
        recorded = source.conversation(reader, plan)
    assert daemon is not None
    _live(target, daemon, plan, recorded, pace, as_json)


def _listen_address(target: Target, listen: str) -> tuple[str, int]:
    try:
        host, port = split_listen(listen)
    except ValueError:
        raise click.UsageError(f"--serve: expected HOST:PORT, got {listen!r}") from None
    if not is_loopback(host) and not target.config.proxy.token:
        raise click.UsageError(
            f"--serve: {listen} is reachable from other machines; set proxy.token "
            "(or RECORDER_PROXY_TOKEN) first"
        )
    return host, port


def _alone(target: Target) -> None:
    """A live replay records through a writer of its own, which migrates the database
    and sets a broken one aside: never beside a running recorder, nor where one cannot
    be ruled out."""
    holder = running_recorder(target)
    if holder is not None:
        raise click.ClickException(
            f"a recorder is running on {target.shown} ({holder}); a live replay records with "
            "a writer of its own, which must not write beside it: replay from a copy of the "
            "database (--database COPY), or stop the recorder"
        )


def _check_daemon_url(url: str) -> None:
    from recorder.replay.live import LiveReplayError, check_url

    try:
        check_url(url)
    except LiveReplayError as exc:
        raise click.BadParameter(str(exc), param_hint="'--against'") from None


def _serve(
    target: Target,
    listen: str,
    address: tuple[str, int],
    plan: Any,
    recorded: Any,
    pace: Any,
    wait: bool,
    loop: bool,
) -> None:
    from recorder.replay.serve import ReplayServer

    host, port = address
    token = target.config.proxy.token
    _say_waits()
    server = ReplayServer(recorded, pace=pace, wait_for_client=wait, loop=loop, token=token)

    def ready(port: int) -> None:
        click.echo(f"replaying {on_one_line(plan.id)} as a daemon on ws://{host}:{port}", err=True)

    async def until_stopped() -> None:
        # SIGTERM (systemd, kill) ends it like Ctrl-C: clients get their close frames.
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        await server.run(host, port, ready=ready)

    try:
        asyncio.run(until_stopped())
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    except (KeyboardInterrupt, asyncio.CancelledError):
        pass


def _say_waits() -> None:
    """The served replay's log on stderr, its INFO lines too: with --wait-for-client it
    says which recorded request it waits for, which a UI that never sends it needs."""
    import logging

    said = logging.getLogger("recorder.replay")
    if not said.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        said.addHandler(handler)
        said.setLevel(logging.INFO)
        said.propagate = False


def _live(target: Target, url: str, plan: Any, recorded: Any, pace: Any, as_json: bool) -> None:
    from recorder.replay.live import LiveReplayError, replay_live

    try:
        result = asyncio.run(replay_live(target.config, url, recorded, pace=pace))
    except LiveReplayError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        sys.exit(130)
    if as_json:
        click.echo(json.dumps(result.to_json(), ensure_ascii=False, indent=2))
    else:
        for line in result.lines():
            click.echo(on_one_line(line))  # what the live daemon said must not steer the terminal
    # Only the daemon's differences fail: where the replay could not keep the recorded
    # order, what followed says nothing certain about the daemon.
    if result.daemon_differed:
        sys.exit(1)
