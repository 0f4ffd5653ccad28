"""A purged session takes its delivered alerts and its export cursor rows with it; an
alert still due to a target stays, to be delivered (the outbox is at least once).

Real parts: recordings and outbox rows written by the writer's own code, the real
Cleanup's purge, SQLite under tmp_path."""

from __future__ import annotations

import asyncio
from pathlib import Path

from recorder.db.alerts import RaisedAlert
from recorder.db.otel_exports import Exported
from recorder.pipeline.alert_ops import RaiseAlerts, RecordDelivery
from recorder.pipeline.export_ops import MarkExported, StartExports
from recorder.times import now_us
from tests.alert_hooks import Recorded
from tests.cleanup_scripts import (
    DAY,
    config_for,
    open_db,
    policy,
    record,
    rows,
    run_policy,
    status,
    with_policies,
)


def alert(sid: str, rule: str) -> RaisedAlert:
    return RaisedAlert(
        rule, "alert", sid, "once", "session failed", "", sid, now_us(), notify=("ops",)
    )


async def outbox(url: str) -> None:
    db, store, _ = await open_db(url)
    try:
        w = Recorded(db, store)
        old = alert("s_old", "delivered"), alert("s_old", "pending"), alert("s_new", "delivered")
        done, pending, kept = await w.perform(RaiseAlerts(old, now_us()))
        for alert_id in (done, kept):
            await w.perform(RecordDelivery(alert_id, "ops", 1, now_us(), True, "success", 0))
        later = now_us() + 60_000_000
        await w.perform(RecordDelivery(pending, "ops", 1, now_us(), False, "refused", later))
        await w.perform(StartExports("endpoint", 0))
        marks = (Exported("s_old", 1, 3, "ab"), Exported("s_new", 2, 3, "cd"))
        await w.perform(MarkExported("endpoint", marks, now_us()))
    finally:
        await db.shutdown()


def test_a_purge_takes_the_sessions_delivered_alerts_and_export_rows(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    url = f"sqlite:///{db}"
    long_ago = now_us() - 30 * DAY
    asyncio.run(
        record(
            url,
            [
                (long_ago, "in", status("s_old", "failed")),
                (now_us(), "in", status("s_new", "failed")),
            ],
        )
    )
    asyncio.run(outbox(url))
    config = with_policies(config_for(tmp_path, url), policy("old", "purge", 'ended_before = "7d"'))
    asyncio.run(run_policy(config, "old"))
    assert rows(db, "select id from sessions") == [("s_new",)]
    assert rows(db, "select rule, session_id from alerts order by id") == [
        ("pending", "s_old"),  # still due: it stays until it is delivered
        ("delivered", "s_new"),
    ]
    assert rows(db, "select count(*) from alert_targets") == [(2,)]
    assert rows(db, "select count(*) from alert_deliveries") == [(2,)]
    assert rows(db, "select session_id from otel_exports") == [("s_new",)]
