"""The alert outbox's writes, run by the database process (:mod:`recorder.pipeline.alert_ops`).

An alert is stored with one ``alert_targets`` row per target before anything is sent;
each attempt to send it adds an ``alert_deliveries`` row and moves its target row on
(delivered, or due again later). The dedupe key (rule, subject, occurrence, kind)
makes storing an alert idempotent: raised again, after a restart too, it is ignored.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, NamedTuple

from sqlalchemy import insert, update
from sqlalchemy.engine import Connection

from recorder.db.backend import backend_of
from recorder.db.schema import alert_deliveries, alert_targets, alerts

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

# The columns of the dedupe key, in the unique constraint's order.
KEY = ("rule", "subject", "occurrence", "kind")


class RaisedAlert(NamedTuple):
    """An alert to store: the fields of :class:`recorder.alerts.occurrence.Occurrence`,
    in its order, as plain data (operations are pickled between processes), made by
    :func:`raised_alerts`. ``notify``: its target names."""

    rule: str
    kind: str
    subject: str
    occurrence: str
    what: str
    text: str
    session_id: str | None
    at_us: int
    connection_id: int | None = None
    seq: int | None = None
    notify: tuple[str, ...] = ()


def raised_alerts(occurrences: Iterable[DataclassInstance]) -> tuple[RaisedAlert, ...]:
    """Occurrences (:class:`recorder.alerts.occurrence.Occurrence`) as the outbox
    stores them, field by field by name. Typed loosely: the db layer does not import
    the rules' package, which imports it."""
    return tuple(RaisedAlert(**asdict(o)) for o in occurrences)


def raise_alerts(
    conn: Connection, raised: Sequence[RaisedAlert], instance: str, raised_us: int
) -> list[int]:
    """Store ``raised`` (those not stored before) and their targets, due at once, in
    one transaction; answers the new alerts' ids, in the order of ``raised``."""
    with conn.begin():
        return insert_alerts(conn, raised, instance, raised_us)


def insert_alerts(
    conn: Connection, raised: Sequence[RaisedAlert], instance: str, raised_us: int
) -> list[int]:
    """:func:`raise_alerts` inside the caller's transaction: a frame batch and the
    alerts its frames raised commit together (call it within ``Store.write_batches``'
    ``conn.begin()``), and no crash can keep the frames yet lose the alerts."""
    if not raised:
        return []
    rows = [_alert_row(a, instance, raised_us) for a in raised]
    # One statement whatever the rows, run with their list ("insertmanyvalues": one
    # multi-row INSERT ... RETURNING): compiled once per process, not per batch
    # (.values(rows) compiled about 0.8 ms of the database process's CPU for each
    # batch that carried alerts; bench/alerts.py).
    statement = (
        backend_of(conn)
        .insert(alerts)
        .on_conflict_do_nothing(index_elements=list(KEY))
        .returning(alerts.c.id, *(alerts.c[k] for k in KEY))
    )
    # RETURNING answers only the rows inserted; the duplicates are left out.
    new = {tuple(r[1:]): int(r[0]) for r in conn.execute(statement, rows)}
    ids: list[int] = []
    targets: list[dict[str, Any]] = []
    for alert in raised:
        alert_id = new.pop((alert.rule, alert.subject, alert.occurrence, alert.kind), None)
        if alert_id is None:
            continue  # stored before, or twice in this call
        ids.append(alert_id)
        targets += [
            {"alert_id": alert_id, "target": t, "next_us": raised_us}
            for t in dict.fromkeys(alert.notify)
        ]
    if targets:
        conn.execute(insert(alert_targets), targets)
    return ids


def _alert_row(alert: RaisedAlert, instance: str, raised_us: int) -> dict[str, Any]:
    row = alert._asdict()
    del row["notify"]
    return {**row, "instance": instance, "raised_us": raised_us}


def record_delivery(
    conn: Connection,
    alert_id: int,
    target: str,
    attempt: int,
    at_us: int,
    ok: bool,
    answer: str,
    next_us: int,
) -> None:
    """One attempt to deliver an alert to a target, and what it answered: delivered
    (``ok``), else due again at ``next_us``."""
    with conn.begin():
        conn.execute(
            insert(alert_deliveries).values(
                alert_id=alert_id,
                target=target,
                attempt=attempt,
                at_us=at_us,
                ok=int(ok),
                answer=answer,
            )
        )
        conn.execute(
            update(alert_targets)
            .where(alert_targets.c.alert_id == alert_id, alert_targets.c.target == target)
            # Once delivered it stays so: a late failure (a send timed out here but
            # answered later) does not make it due again.
            .where(alert_targets.c.done == 0)
            .values(
                done=int(ok),
                attempts=attempt,
                next_us=None if ok else next_us,
                last_answer=answer,
            )
        )
