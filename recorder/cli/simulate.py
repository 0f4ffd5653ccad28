"""``recorder simulate``: a simulated daemon for demos, tests and benchmarks."""

from __future__ import annotations

from typing import Any

import click

from recorder.cli.options import FiniteRange, UsageFailure


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="0 picks a free port.",
)
@click.option(
    "--sessions",
    "n_sessions",
    type=click.IntRange(min=0),
    default=0,
    help="Sessions to spawn on its own.",
)
@click.option("--session-interval", type=FiniteRange(min=0), default=0.5, show_default=True)
@click.option(
    "--chunk-delay",
    type=FiniteRange(min=0),
    default=0.05,
    show_default=True,
    help="Mean seconds between stream frames (the rate).",
)
@click.option("--fail-rate", type=FiniteRange(0, 1), default=0.2, show_default=True)
@click.option("--seed", type=int, help="Random seed: the same seed gives the same sessions.")
@click.option(
    "--status-interval",
    type=FiniteRange(min=0),
    default=0.0,
    help="Broadcast daemon_status_update every N s.",
)
@click.option(
    "--disconnect-after",
    type=click.IntRange(min=0),
    default=0,
    help="Force-close a connection after N frames.",
)
@click.option(
    "--disconnects",
    type=click.IntRange(min=0),
    default=0,
    help="At most N forced disconnects (0: no limit).",
)
@click.option(
    "--firehose",
    type=click.IntRange(min=0),
    default=0,
    help="Send N stream_chunk frames to each new client.",
)
@click.option("--token", envvar="SIMULATOR_TOKEN", help="Require this bearer token (or ?token=).")
@click.option("--api-key", envvar="SIMULATOR_API_KEY", help="Require this x-api-key (or ?apiKey=).")
@click.option(
    "--max-connections", type=click.IntRange(min=0), default=0, help="Answer 429 beyond N clients."
)
@click.option(
    "--journal",
    type=click.Path(dir_okay=False, writable=True),
    help="Append every frame sent and received to this JSONL file.",
)
def simulate(**opts: Any) -> None:
    """Run a simulated orchestrator daemon (for demos, tests and benchmarks).

    Example: recorder simulate --port 8787 --sessions 5 --seed 1
    """
    import asyncio

    from recorder.simulator import SimulatorOptions, serve

    if opts["journal"]:
        # Opened here: a file that cannot be written failed at start-up as "cannot listen".
        try:
            open(opts["journal"], "a").close()
        except OSError as exc:
            raise UsageFailure(
                f"--journal: cannot write {opts['journal']}: {exc.strerror}"
            ) from None
    options = SimulatorOptions(
        host=opts["host"],
        port=opts["port"],
        sessions=opts["n_sessions"],
        session_interval=opts["session_interval"],
        chunk_delay=opts["chunk_delay"],
        fail_rate=opts["fail_rate"],
        seed=opts["seed"],
        status_interval=opts["status_interval"],
        disconnect_after=opts["disconnect_after"],
        disconnects=opts["disconnects"],
        firehose=opts["firehose"],
        token=opts["token"],
        api_key=opts["api_key"],
        max_connections=opts["max_connections"],
        journal_path=opts["journal"],
        # A long-running simulator must not keep every frame in memory.
        journal=False,
    )

    def ready(port: int) -> None:
        click.echo(f"simulated daemon listening on ws://{options.host}:{port}", err=True)

    try:
        asyncio.run(serve(options, ready=ready))
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}"
        ) from None
