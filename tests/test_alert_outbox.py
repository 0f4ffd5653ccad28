"""The alert outbox (issue 21, delivery): alerts stored once by their dedupe key, on
SQLite and PostgreSQL, through the writer's own code; delivered through Apprise to a
real HTTP target on loopback at least once and, as far as the outbox can tell, once:
across a target that is down, a deliverer restarted meanwhile, and a target that
hangs beside one that answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text

from recorder.alerts.delivery import Deliverer, Retry, ThreadReads, retry_delay
from recorder.alerts.send import scrub, with_timeouts
from recorder.alerts.spec import mask_url
from recorder.db.alert_reads import AlertRecord
from recorder.db.alerts import RaisedAlert, insert_alerts
from recorder.db.schema import alert_deliveries, alert_targets, alerts, metadata
from recorder.pipeline.alert_ops import RaiseAlerts
from recorder.times import now_us
from tests.alert_hooks import Hook, Recorded
from tests.helpers import writer_database

SECRET = "s3cr3tT0ken"
# Fast backoff: a target back up is tried again within a fraction of a second.
FAST = Retry(timeout=5.0, base=0.05, cap=0.2)


@pytest.fixture
def url(either_url: str) -> str:
    return either_url


@asynccontextmanager
async def writer(url: str) -> AsyncIterator[Recorded]:
    db, store, _ = await writer_database(url)
    try:
        yield Recorded(db, store)
    finally:
        await db.shutdown()


@asynccontextmanager
async def delivering(deliverer: Deliverer) -> AsyncIterator[Deliverer]:
    task = asyncio.create_task(deliverer.run())
    try:
        yield deliverer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def failed(rule: str = "session-failed", subject: str = "s-1", *targets: str) -> RaisedAlert:
    return RaisedAlert(
        rule=rule,
        kind="alert",
        subject=subject,
        occurrence="once",
        what="session failed",
        text='error: "disk full"',
        session_id=subject,
        at_us=now_us(),
        connection_id=1,
        seq=7,
        notify=targets or ("ops",),
    )


async def raise_(w: Recorded, *raised: RaisedAlert) -> list[int]:
    return await w.perform(RaiseAlerts(raised, now_us()))


async def read_alerts(url: str, **kw: Any) -> list[AlertRecord]:
    return await ThreadReads(url)(lambda r: r.alerts(**kw))


async def test_the_migration_makes_the_tables_the_schema_describes(url: str) -> None:
    """SQLite is compared whole in test_writer; PostgreSQL here, for the outbox's tables."""
    async with writer(url) as w:

        def diff(conn: Any) -> list[Any]:
            found: list[Any] = compare_metadata(MigrationContext.configure(conn), metadata)
            ours = {alerts.name, alert_targets.name, alert_deliveries.name}
            return [d for d in found if ours & set(str(d).replace("'", " ").split())]

        assert await w.db.run(diff) == []


async def test_an_alert_raised_twice_is_stored_once_and_delivered_once(url: str) -> None:
    hook = await Hook().start()
    async with writer(url) as w:
        first = await raise_(w, failed("session-failed", "s-1", "ops", "ops"))
        assert len(first) == 1
        # Raised again (a restart re-reading the same frame), and within one batch.
        again = failed("session-failed", "s-1", "ops")
        assert await raise_(w, again, again) == []
        # The same key but resolved is another alert.
        assert len(await raise_(w, again._replace(kind="resolved"))) == 1
        deliverer = Deliverer(
            ThreadReads(url), w.perform, {"ops": hook.url(f"hook/{SECRET}")}, retry=FAST
        )
        async with delivering(deliverer):
            deliverer.raised()
            posts = [await hook.next_post(), await hook.next_post()]
            done = [await w.next_delivery(), await w.next_delivery()]
        await hook.stop()
        assert hook.posts.empty() and w.deliveries.empty()
        assert {p["path"] for p in posts} == {f"/hook/{SECRET}"}
        assert {p["title"] for p in posts} == {"session-failed: s-1"}
        assert {p["message"] for p in posts} == {
            '[session-failed] session failed, session s-1: "error: "disk full""'
        }
        assert all(d.ok and d.attempt == 1 for d in done)
        stored = await read_alerts(url)
        assert [(r.alert.kind, r.alert.subject) for r in stored] == [
            ("resolved", "s-1"),
            ("alert", "s-1"),
        ]
        for record in stored:
            assert [(t.target, t.done, t.attempts, t.next_us) for t in record.targets] == [
                ("ops", True, 1, None)
            ]
            assert [(d.target, d.attempt, d.ok) for d in record.deliveries] == [("ops", 1, True)]
            assert record.deliveries[0].answer.startswith("success")
        assert await ThreadReads(url)(lambda r: r.due_deliveries(now_us() + 10**12)) == []


async def test_a_target_that_is_down_gets_the_alert_once_it_is_back(url: str) -> None:
    hook = Hook()  # its port refuses connections until it starts
    async with writer(url) as w:
        await raise_(w, failed())
        deliverer = Deliverer(
            ThreadReads(url), w.perform, {"ops": hook.url(f"hook/{SECRET}")}, retry=FAST
        )
        async with delivering(deliverer):
            deliverer.raised()
            down = [await w.next_delivery(), await w.next_delivery()]
            await hook.start()
            post = await hook.next_post()
            while (attempt := await w.next_delivery()).ok is False:
                pass
        await hook.stop()
    assert post["title"] == "session-failed: s-1"
    assert hook.posts.empty() and hook.accepted == 1
    assert [(d.attempt, d.ok) for d in down] == [(1, False), (2, False)]
    # Backed off: the second attempt came at least base/2 after the first (jitter).
    assert down[1].at_us - down[0].at_us >= FAST.base / 2 * 1e6
    assert all(d.next_us - d.at_us <= FAST.cap * 1e6 for d in down)
    assert "Connection error" in down[0].answer and SECRET not in down[0].answer
    (record,) = await read_alerts(url)
    assert [t.done for t in record.targets] == [True]
    assert record.targets[0].attempts == attempt.attempt == len(record.deliveries)
    assert [d.ok for d in record.deliveries][-1] is True
    assert not any(d.ok for d in record.deliveries[:-1])


async def test_a_deliverer_restarted_while_the_target_is_down_delivers_once(url: str) -> None:
    hook = Hook()
    async with writer(url) as w:
        await raise_(w, failed(), failed(subject="s-2"))
        targets = {"ops": hook.url()}
        first = Deliverer(ThreadReads(url), w.perform, targets, retry=FAST)
        async with delivering(first):
            first.raised()
            # One attempt only: the target is held back after it, not tried per alert.
            failure = await w.next_delivery()
        assert not failure.ok and w.deliveries.empty()
        await hook.start()
        second = Deliverer(ThreadReads(url), w.perform, targets, retry=FAST)
        async with delivering(second):
            # Not told anything: the retry is due by the database's next_us.
            posts = [await hook.next_post(), await hook.next_post()]
            recorded = [await w.next_delivery(), await w.next_delivery()]
        await hook.stop()
    assert hook.posts.empty() and w.deliveries.empty()
    assert sorted(p["title"] for p in posts) == ["session-failed: s-1", "session-failed: s-2"]
    assert all(r.ok for r in recorded)
    # The one that failed before counts on from its attempt.
    assert sorted(r.attempt for r in recorded) == [1, 2]
    for record in await read_alerts(url):
        assert [(t.done, t.next_us) for t in record.targets] == [(True, None)]


@pytest.mark.parametrize("how", ["hang", "trickle"])
async def test_a_hung_target_holds_one_thread_and_delays_no_other(how: str, tmp_path: Path) -> None:
    """SQLite alone: what is tested is the deliverer's threads and timeouts. A target
    that never answers is ended by Apprise's read timeout; one that answers a byte at
    a time, by the deliverer's own, and holds its thread until it stops."""
    url = f"sqlite:///{tmp_path / 'recorder.db'}"
    hung = await Hook(hang=how == "hang", trickle=how == "trickle").start()
    good = await Hook().start()
    timeout = 2.0
    async with writer(url) as w:
        await raise_(w, *(failed("session-failed", f"s-{i}", "hung", "good") for i in range(6)))
        deliverer = Deliverer(
            ThreadReads(url),
            w.perform,
            {"hung": hung.url(), "good": good.url()},
            retry=Retry(timeout=timeout, base=0.05, cap=0.05),
            threads=2,
        )
        started = time.monotonic()
        async with delivering(deliverer):
            deliverer.raised()
            posts = [await good.next_post(timeout) for _ in range(6)]
            took = time.monotonic() - started
            # Meanwhile the hung target got one request, not one per alert.
            assert (hung.accepted, hung.open) == (1, 1)
            gave_up = await w.next_delivery(2 * timeout)
            while gave_up.target != "hung":
                gave_up = await w.next_delivery(2 * timeout)
            # Its thread still sending (trickle): no other send to it until it returns.
            assert deliverer.stuck == ({"hung": 1} if how == "trickle" else {})
        await hung.stop()
        await good.stop()
    assert len(posts) == 6 and took < timeout / 2
    assert hung.accepted == 1 and not gave_up.ok
    if how == "hang":
        assert gave_up.answer.startswith("failure: A Connection error")
    else:
        assert gave_up.answer == f"no answer within {timeout:g} s"
    assert deliverer.delivered == 6


async def test_the_reads_page_by_key_and_walk_their_indexes(url: str) -> None:
    async with writer(url) as w:
        for i in range(5):
            await raise_(w, failed("rule-a" if i % 2 else "rule-b", f"s-{i}", "ops", "phone"))
        first = await w.perform(RaiseAlerts((failed("rule-c", "s-9"),), now_us() - 10**9))
        reads = ThreadReads(url)
        page = await reads(lambda r: r.alerts(limit=2))
        assert [a.alert.subject for a in page] == ["s-9", "s-4"]
        rest = await reads(lambda r: r.alerts(limit=10, before_id=page[-1].alert.id))
        assert [a.alert.subject for a in rest] == ["s-3", "s-2", "s-1", "s-0"]
        assert [a.alert.subject for a in await reads(lambda r: r.alerts(rule="rule-a"))] == [
            "s-3",
            "s-1",
        ]
        since = rest[-1].alert.raised_us
        assert len(await reads(lambda r: r.alerts(since_us=since))) == 5
        assert [t.target for t in rest[0].targets] == ["ops", "phone"]
        # Due: the oldest first (rule-c's, raised earliest), to the targets asked.
        due = await reads(lambda r: r.due_deliveries(now_us(), 3, ["ops"]))
        assert (due[0].alert.id, due[0].target, due[0].attempts) == (first[0], "ops", 0)
        assert {d.target for d in due} == {"ops"} and len(due) == 3
        assert await reads(lambda r: r.due_deliveries(now_us(), 3, [])) == []
        assert await reads(lambda r: r.due_deliveries(now_us(), 3, None, "elsewhere")) == []
        assert await reads(lambda r: r.next_delivery_us(now_us())) is None

        def plan(conn: Any) -> str:
            explain = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
            sql = "SELECT * FROM alert_targets WHERE next_us <= 5 ORDER BY next_us LIMIT 10"
            if conn.dialect.name == "postgresql":
                conn.execute(text("SET enable_seqscan = off"))
            return " ".join(str(row[-1]) for row in conn.execute(text(explain + sql)))

        assert "ix_alert_targets_next_us" in await w.db.run(plan)


async def test_alerts_stored_in_the_callers_transaction_go_with_it(url: str) -> None:
    """How a frame batch and its alerts will commit together: insert_alerts joins the
    transaction it is called in, and is rolled back with it."""
    async with writer(url) as w:

        def write_then_fail(conn: Any) -> None:
            with conn.begin():
                assert len(insert_alerts(conn, [failed()], "default", now_us())) == 1
                raise RuntimeError("the batch failed")

        with pytest.raises(RuntimeError):
            await w.db.run(write_then_fail)
        assert await read_alerts(url) == []
        assert len(await raise_(w, failed())) == 1


def test_a_retry_waits_twice_as_long_each_time_up_to_the_cap_with_jitter() -> None:
    assert [retry_delay(n, 5, 600, 0.0) for n in (1, 2, 3)] == [2.5, 5.0, 10.0]
    assert [retry_delay(n, 5, 600, 0.999) for n in (1, 2)] == pytest.approx([5.0, 10.0], 0.01)
    assert retry_delay(8, 5, 600, 0.5) == 450.0 and retry_delay(10**6, 5, 600, 0.0) == 300.0


@pytest.mark.parametrize(
    ("target", "shown"),
    [
        ("ntfy://user:pa55word@ntfy.example.net/agents", "ntfy://***@ntfy.example.net/***"),
        ("json://127.0.0.1:9000/hook?token=abc123", "json://127.0.0.1:9000/***?***"),
        ("tgram://123456789:AAHbottoken/chat", "tgram://***/***"),
        ("pbul://o.gn5kj6nfhv736I7jC3cj3QLRiyhgl98b", "pbul://***"),
        ("gotify://nas:8080/AbCdEfGh", "gotify://nas:8080/***"),
        ("not a url", "***"),
    ],
)
def test_a_target_is_shown_without_its_secrets(target: str, shown: str) -> None:
    assert mask_url(target) == shown
    answer = f"error posting {target} to {target.partition('://')[2]}:\n 500"
    scrubbed = scrub(answer, target)
    assert "\n" not in scrubbed
    for secret in (
        "pa55word",
        "abc123",
        "AAHbottoken",
        "gn5kj6nfhv736I7jC3cj3QLRiyhgl98b",
        "AbCdEfGh",
    ):
        assert secret not in scrubbed


def test_a_target_gets_socket_timeouts_unless_it_sets_its_own() -> None:
    assert with_timeouts("json://h:1/x", 2.5) == "json://h:1/x?cto=2.5&rto=2.5"
    assert with_timeouts("json://h:1/x?rto=30#f", 2) == "json://h:1/x?rto=30&cto=2#f"
    assert with_timeouts("json://h/?cto=1&rto=1", 2) == "json://h/?cto=1&rto=1"
