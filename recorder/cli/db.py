"""``recorder db``: migrate and inspect the schema."""

from __future__ import annotations

import click

from recorder.cli.options import load, reading, run_db, running_recorder, target_options


@click.group()
def db() -> None:
    """Database schema: migrate and inspect."""


@db.command("upgrade")
@target_options
def db_upgrade(config_path: str | None, database: str | None) -> None:
    """Create or migrate the database to the newest schema (the recorder stopped).

    Example: recorder db upgrade --database /var/lib/orchestrator-recorder/recorder.db
    """
    from recorder.db.migrations import upgrade

    target = load(config_path, database)
    holder = running_recorder(target)
    if holder is not None:
        # Its writer would meet a schema it was not written for.
        raise click.ClickException(
            f"a recorder is running on {target.shown} ({holder}); it migrated the database "
            "when it started: stop it first to migrate with this version"
        )
    before, after = run_db(target, upgrade, create=True)
    if before == after:
        click.echo(f"already at {after} (head)")
    else:
        click.echo(f"upgraded {before or 'empty database'} -> {after}")


@db.command("current")
@target_options
def db_current(config_path: str | None, database: str | None) -> None:
    """Show the database's schema revision and the newest one this recorder knows.

    Example: recorder db current
    """
    from recorder.db.migrations import head_revision, known_revision

    target = load(config_path, database)
    with reading(target) as recordings:
        rev = recordings.schema_revision()
    head = head_revision()
    if rev == head:
        state = "up to date"
    elif rev is not None and not known_revision(rev):
        state = "unknown to this recorder: a newer one wrote it"
    else:
        state = "needs `recorder db upgrade`"
    click.echo(f"{rev or 'none'} (head: {head}; {state})")


@db.command("vacuum")
@target_options
def db_vacuum(config_path: str | None, database: str | None) -> None:
    """Give the space of purged recordings back to the file system, in full.

    Purges give space back as they go in databases this recorder created; run this
    once on an older database (the recorder must be stopped), or after a large purge.

    Example: recorder db vacuum --database /var/lib/orchestrator-recorder/recorder.db
    """
    from recorder.cli.cleanup import vacuum

    before, after = vacuum(load(config_path, database))
    click.echo(f"{before / 1048576:.1f} MiB -> {after / 1048576:.1f} MiB")
