"""What the read library reads of the alert outbox: the alerts raised, with their
targets and every delivery attempt (`recorder alerts`), and the deliveries due now
(the service's deliverer). Part of :class:`recorder.db.recordings.Recordings`.

Each read walks an index: alerts by id (or raised_us), their targets by primary key
and attempts by ``alert_id``; the due pairs by the partial index on ``next_us``, which
holds only the pairs not yet delivered.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from recorder.db.readonly import Reader, first_row
from recorder.db.rows import Named

ALERT_COLUMNS = (
    "a.id, a.instance, a.rule, a.kind, a.subject, a.occurrence, a.what, a.text, "
    "a.session_id, a.at_us, a.connection_id, a.seq, a.raised_us"
)


@dataclass(frozen=True)
class Alert(Named):
    """One stored alert (a row of ``alerts``)."""

    id: int
    rule: str
    kind: str
    subject: str
    occurrence: str
    what: str
    text: str
    session_id: str | None
    at_us: int
    raised_us: int
    connection_id: int | None = None
    seq: int | None = None
    instance: str = "default"


@dataclass(frozen=True)
class Delivery:
    """One attempt to deliver an alert to a target, and what the target answered."""

    target: str
    attempt: int
    at_us: int
    ok: bool
    answer: str


@dataclass(frozen=True)
class AlertTarget:
    """Where an alert stands with one of its targets."""

    target: str
    done: bool
    attempts: int
    # When the next attempt is due; None once delivered.
    next_us: int | None
    last_answer: str | None


@dataclass(frozen=True)
class AlertRecord:
    """An alert with its targets and its delivery attempts, oldest attempt first."""

    alert: Alert
    targets: list[AlertTarget]
    deliveries: list[Delivery]


@dataclass(frozen=True)
class Due:
    """A delivery to make: an alert for one of its targets, and the attempts so far."""

    alert: Alert
    target: str
    attempts: int
    next_us: int


class AlertReads:
    reader: Reader

    def alerts(
        self,
        *,
        since_us: int | None = None,
        rule: str | None = None,
        limit: int = 50,
        before_id: int | None = None,
    ) -> list[AlertRecord]:
        """Alerts newest first, raised at or after ``since_us``, of ``rule``; a page
        of ``limit`` (0: all) ending before the alert ``before_id`` (the next page's
        key: the last id of this one)."""
        where = ["1 = 1"]
        params: dict[str, Any] = {}
        for clause, name, value in (
            ("a.raised_us >= :since", "since", since_us),
            ("a.rule = :rule", "rule", rule),
            ("a.id < :before", "before", before_id),
        ):
            if value is not None:
                where.append(clause)
                params[name] = value
        limit_sql = f" LIMIT {int(limit)}" if limit else ""
        sql = (
            f"SELECT {ALERT_COLUMNS} FROM alerts a WHERE {' AND '.join(where)}"
            f" ORDER BY a.id DESC{limit_sql}"
        )
        found = [Alert.of(r) for r in self.reader.rows(sql, params)]
        if not found:
            return []
        ids = ", ".join(str(int(a.id)) for a in found)
        targets: dict[int, list[AlertTarget]] = {a.id: [] for a in found}
        sql = f"SELECT * FROM alert_targets WHERE alert_id IN ({ids}) ORDER BY alert_id, target"
        for r in self.reader.rows(sql):
            targets[r["alert_id"]].append(_target(r))
        deliveries: dict[int, list[Delivery]] = {a.id: [] for a in found}
        sql = f"SELECT * FROM alert_deliveries WHERE alert_id IN ({ids}) ORDER BY alert_id, id"
        for r in self.reader.rows(sql):
            deliveries[r["alert_id"]].append(_delivery(r))
        return [AlertRecord(a, targets[a.id], deliveries[a.id]) for a in found]

    def due_deliveries(
        self,
        now_us: int,
        limit: int = 100,
        targets: Collection[str] | None = None,
        instance: str | None = None,
    ) -> list[Due]:
        """Deliveries not made yet and due by ``now_us``, longest due first; only to
        ``targets`` if given (the deliverer leaves out those it cannot send to now:
        busy, held back, or no longer configured), of alerts ``instance`` raised."""
        among, params = _among(targets, instance)
        if among is None:
            return []
        sql = (
            f"SELECT {ALERT_COLUMNS}, t.target, t.attempts, t.next_us AS due_us"
            " FROM alert_targets t JOIN alerts a ON a.id = t.alert_id"
            f" WHERE t.next_us <= :now{among} ORDER BY t.next_us, t.alert_id LIMIT {int(limit)}"
        )
        return [
            Due(Alert.of(r), r["target"], int(r["attempts"]), int(r["due_us"]))
            for r in self.reader.rows(sql, {**params, "now": now_us})
        ]

    def next_delivery_us(
        self,
        after_us: int,
        targets: Collection[str] | None = None,
        instance: str | None = None,
    ) -> int | None:
        """When the soonest delivery not made yet that is due after ``after_us`` is
        due (as :meth:`due_deliveries` chooses them)."""
        among, params = _among(targets, instance)
        if among is None:
            return None
        sql = (
            "SELECT t.next_us FROM alert_targets t JOIN alerts a ON a.id = t.alert_id"
            f" WHERE t.next_us > :after{among} ORDER BY t.next_us LIMIT 1"
        )
        row = first_row(self.reader, sql, {**params, "after": after_us})
        return None if row is None else int(row["next_us"])


def _among(
    targets: Collection[str] | None, instance: str | None
) -> tuple[str | None, dict[str, Any]]:
    """The SQL that keeps to ``targets`` and ``instance`` (None: there is nothing to
    keep), and its parameters."""
    sql, params = "", {}
    if targets is not None:
        if not targets:
            return None, {}
        params = {f"target{i}": t for i, t in enumerate(sorted(targets))}
        sql = f" AND t.target IN ({', '.join(':' + p for p in params)})"
    if instance is not None:
        sql += " AND a.instance = :instance"
        params["instance"] = instance
    return sql, params


def _target(row: Mapping[str, Any]) -> AlertTarget:
    return AlertTarget(
        row["target"], bool(row["done"]), int(row["attempts"]), row["next_us"], row["last_answer"]
    )


def _delivery(row: Mapping[str, Any]) -> Delivery:
    return Delivery(
        row["target"], int(row["attempt"]), row["at_us"], bool(row["ok"]), row["answer"]
    )
