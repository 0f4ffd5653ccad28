"""``recorder web``: the web console, on its own, read-only."""

from __future__ import annotations

import click

from recorder.cli.options import UsageFailure, load, reading, target_options


@click.command()
@target_options
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Where to serve it (default: web.listen, else 127.0.0.1:8789; port 0: any free).",
)
def web(config_path: str | None, database: str | None, listen: str | None) -> None:
    """Serve the web console: the recorded sessions in a browser, read-only.

    On an address other machines reach it needs web.token (or RECORDER_WEB_TOKEN),
    which browsers present as Authorization: Bearer or once as ?token=. It prints
    its URL once it listens, and serves until Ctrl-C.

    Example: recorder web --database recorder.db --listen 127.0.0.1:8789
    """
    from recorder.addresses import split_listen
    from recorder.config import ConfigError
    from recorder.config.checks import web_needs_token
    from recorder.config.sections import DEFAULT_WEB_LISTEN

    target = load(config_path, database)
    where = listen or target.config.web.listen or DEFAULT_WEB_LISTEN
    token = target.config.web.token
    try:
        web_needs_token("--listen" if listen else target.config.source, "web.listen", where, token)
    except ConfigError as exc:
        raise UsageFailure(str(exc).replace("--listen: web.listen:", "--listen:", 1)) from None
    host, port = split_listen(where)
    with reading(target):
        pass  # a database that cannot be read is said now, in one line, not per request
    _serve(target.url, target.shown, host, port, token)


def _serve(url: str, shown: str, host: str, port: int, token: str | None) -> None:
    import asyncio

    from recorder.web.server import address, bind, server

    try:
        sock = bind(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    click.echo(f"web console on {address(sock)}", err=True)
    asyncio.run(server(url, shown, token).serve(sockets=[sock]))
