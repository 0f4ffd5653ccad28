"""The alert outbox's operations on the writer line: storing raised alerts, and each
delivery attempt (:mod:`recorder.db.alerts`), in order with the frame batches.

An alert a frame raised is not stored here: the classifier puts it in the batch's
``IndexBatch.alerts`` and ``Store.write_batches`` calls
:func:`recorder.db.alerts.insert_alerts` inside the batch's transaction, so that no
crash keeps a frame and loses the alert it raised. :class:`RaiseAlerts` is for alerts
raised apart from a batch (conditions on a timer, the report's digest).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from recorder.db.alerts import RaisedAlert
from recorder.pipeline.ops import Operation, Ping

if TYPE_CHECKING:
    from recorder.alerts.spec import AlertsConfig
    from recorder.db.connection import WriterDatabase
    from recorder.db.write import Store
    from recorder.pipeline.classifier import Classifier


@dataclass(frozen=True, slots=True)
class RaiseAlerts(Operation[list[int]]):
    """Alerts into the outbox, each with its targets (``RaisedAlert.notify``), due at
    once; those stored before (same dedupe key) are ignored. Answers the new ids."""

    raised: tuple[RaisedAlert, ...]
    raised_us: int

    async def run(self, db: WriterDatabase, store: Store) -> list[int]:
        from recorder.db.alerts import raise_alerts

        return await db.run(raise_alerts, self.raised, store.instance, self.raised_us)


@dataclass(frozen=True, slots=True)
class RecordDelivery(Operation[None]):
    """One attempt to deliver an alert to a target and what it answered: delivered
    (``ok``), or due again at ``next_us``."""

    alert_id: int
    target: str
    attempt: int
    at_us: int
    ok: bool
    answer: str
    next_us: int

    async def run(self, db: WriterDatabase, store: Store) -> None:
        from recorder.db.alerts import record_delivery

        await db.run(
            record_delivery,
            self.alert_id,
            self.target,
            self.attempt,
            self.at_us,
            self.ok,
            self.answer,
            self.next_us,
        )


@dataclass(frozen=True, slots=True)
class ReloadRules(Operation[None]):
    """SIGHUP: the classifier's frame rules as ``[alerts]`` says now, keeping what the
    old ones remember (statuses, types, when each last alerted)."""

    alerts: AlertsConfig

    def prepared(self, classifier: Classifier) -> Operation[None]:
        from recorder.alerts.rules import Rules

        if classifier.rules is not None:
            classifier.rules = classifier.rules.reloaded(self.alerts)
        elif any(not rule.condition for rule in self.alerts.rules):
            classifier.rules = Rules.from_config(self.alerts)
        return Ping()
