"""The long-running service: migrate, then run the writer and the link until told to stop.

Signal handlers only set an event. :meth:`Service.shutdown` closes the link and the
proxy (recording whatever the daemon sends before its close frame), then drains the
writer's queue, all within ``storage.shutdown_timeout``, and says what it cost
(``stopping.py``). A start on a full disk waits for room (``space.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import os
import signal
import time
from typing import Any

import structlog

from recorder import logs
from recorder.addresses import split_listen
from recorder.capture.link import Link
from recorder.capture.proxy import Proxy
from recorder.cleanup.jobs import Cleanup
from recorder.cleanup.settings import check_schedules
from recorder.config import Config, ConfigError, load_config
from recorder.db.backend import backend, display_database
from recorder.db.locks import AlreadyRunning, InstanceLock
from recorder.db.readonly import frames_since
from recorder.pipeline.writer import KILL_WAIT, Writer, WriterError
from recorder.protocol.policy import PolicyError
from recorder.service.metrics import render, serve_metrics
from recorder.service.notify import Notifier
from recorder.service.space import FULL_ERRNOS, FullDisk
from recorder.service.stopping import (
    COUNT_WITHIN,
    Loss,
    close_producers,
    count,
    finished,
    say,
)
from recorder.service.watch import beat, describe, watch
from recorder.times import now_us

log = structlog.get_logger("recorder.service")


class Service:
    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        self.config = config
        self.notifier = notifier or Notifier()
        self.started = asyncio.Event()
        self.started_us = now_us()
        self.writer: Writer
        self.link: Link
        self.proxy: Proxy | None = None
        self.cleanup: Cleanup | None = None
        # Refreshed by the watch loop, for /metrics.
        self.database_bytes: int | None = None
        # The newest frame id before this run: what this run stored is after it.
        self.first_frame_id = 0
        # The last run on this database did not stop cleanly.
        self.unclean = False
        # A recorder has used this database before (SQLite: its lock file says so).
        self.used_before = False
        # Set once the stop has begun: no reload starts after it.
        self.stopping = False
        # (exit code, frames lost) once the stop has said what it cost: a second
        # signal after it has nothing new to say.
        self.said: tuple[int, int] | None = None
        self.reload_task: asyncio.Task[None] | None = None
        self._reload_again = False
        self._full_disk = FullDisk(config.storage.url, self.notifier)
        self._writer_task: asyncio.Task[None]
        self._link_task: asyncio.Task[None]
        self._metrics_server: Any = None

    def force_exit(self) -> None:
        """A second stop signal: leave now, and say what is true at this moment. Once
        the stop has said what it cost, that stands; before, the writer processes are
        killed (nothing more is committed) and the database counted, here, with
        nothing else running. With nothing lost the stop stays a clean one: exit 0,
        as the first signal would have."""
        if self.said is not None:
            code, lost = self.said
            log.warning(
                "stopping at once on a second signal; what the stop cost is said above",
                lost=lost,
            )
            os._exit(code)
        writer = getattr(self, "writer", None)
        loss = Loss(0, 0)
        failed = False
        if writer is not None and writer.running:
            failed = writer.died is not None
            if not writer.kill_and_wait():
                log.error("writer processes did not exit after SIGKILL; counting anyway")
            loss = count(writer, self.config.storage.url, self.first_frame_id, COUNT_WITHIN)
        if loss.lost == 0 and not failed:
            log.warning("stopping at once on a second signal; nothing was lost", lost=0)
            os._exit(0)
        log.error("stopping at once on a second signal; frames were not committed", **loss.fields())
        os._exit(1)

    def request_reload(self) -> None:
        """SIGHUP: one reload at a time. One asked for while another runs follows it
        (once, however many were asked for: it reads the newest file). Before the
        service has started, and once its stop has begun, there is nothing to reload."""
        if self.stopping or not self.started.is_set():
            state = "stopping" if self.stopping else "starting"
            log.info(f"reload ignored: the recorder is {state}")
            return
        if self.reload_task is not None and not self.reload_task.done():
            self._reload_again = True
            return
        self.reload_task = asyncio.get_running_loop().create_task(self._reloads(), name="reload")

    async def _reloads(self) -> None:
        while True:
            self._reload_again = False
            await self.reload()
            if not self._reload_again or self.stopping:
                return

    async def reload(self) -> None:
        """SIGHUP: the log level and the cleanup policies, from the same file; a
        broken file is logged and the running configuration kept. READY=1 follows
        RELOADING=1 whatever happens, or systemd would show the unit reloading."""
        self.notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
        try:
            await self._reload()
        except Exception as exc:
            log.error("reload failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            try:
                status = describe(self)
            except Exception:
                status = "running"
            self.notifier.send(READY=1, STATUS=status)

    async def _reload(self) -> None:
        try:
            new = load_config(None if self.config.source == "<defaults>" else self.config.source)
            check_schedules(new.cleanup.policies)
        except (ConfigError, PolicyError, OSError) as exc:
            error = str(exc) if not isinstance(exc, OSError) else f"{self.config.source}: {exc}"
            log.error("configuration not reloaded; keeping the running one", error=error)
        else:
            logs.configure(new.log.level, new.log.format)
            before = set(self.cleanup.policies) if self.cleanup is not None else set()
            if self.cleanup is not None:
                # The running schedule takes the new policies: runs in progress (asked
                # for by `recorder cleanup run`, or scheduled) finish as they began.
                self.cleanup.apply(new)
            else:
                cleanup = Cleanup(new, self.writer, self.link)
                if cleanup.wanted:
                    cleanup.start()
                    self.cleanup = cleanup
            self.config = dataclasses.replace(self.config, log=new.log, cleanup=new.cleanup)
            now = set(self.cleanup.policies) if self.cleanup is not None else set()
            removed = sorted(before - now)
            # An emptied file, or one whose [cleanup] went missing, is easy to reload
            # by mistake: say what stops being done, louder than the routine line.
            (log.warning if removed else log.info)(
                "configuration reloaded" + ("; cleanup policies removed" if removed else ""),
                config=new.source,
                log_level=new.log.level,
                policies=len(now),
                removed=removed or None,
            )

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        database = backend(self.config.storage.url)
        shown = database.shown
        lock = database.lock(self.config.storage.instance)
        try:
            while not await self._acquired(lock, stop):
                if stop.is_set():
                    return 0
        except AlreadyRunning as exc:
            log.error(str(exc))
            return 1
        except (OSError, TimeoutError) as exc:
            log.error(f"cannot use database {shown}: {getattr(exc, 'strerror', None) or exc}")
            return 1
        except Exception as exc:  # the server refused us (asyncpg's errors)
            log.error(f"cannot use database {shown}: {type(exc).__name__}: {exc}".splitlines()[0])
            return 1
        self.unclean, self.used_before = lock.unclean, lock.used_before
        code = 1
        try:
            code = await self._with_writer(stop)
            return code
        finally:
            # "Stopped cleanly" only when it did: a writer that failed (a corrupt file,
            # a killed process) leaves the next start its quick_check.
            try:
                await lock.release(clean=code == 0, refused=code == 2)
            except OSError:
                pass  # a full disk refused the "stopped" mark: the next start checks

    async def _acquired(self, lock: InstanceLock, stop: asyncio.Event) -> bool:
        """Take the lock; False after waiting for room when the disk had none for the
        lock file (try again, unless ``stop`` is set)."""
        try:
            await lock.acquire()
        except OSError as exc:
            if exc.errno not in FULL_ERRNOS:
                raise
            await self._full_disk.wait(stop, exc.strerror or str(exc))
            return False
        return True

    async def _with_writer(self, stop: asyncio.Event) -> int:
        started = await self._start_writer(stop)
        if isinstance(started, int):
            return started
        writer, before, after = started
        s = self.config.storage
        try:
            if before != after:
                log.info(
                    "database migrated",
                    database=display_database(s.url),
                    revision_from=before,
                    revision_to=after,
                )
            dangling = await writer.close_dangling()
            if dangling:
                log.warning("marked connections left open by an unclean stop", count=dangling)
            return await self._run(writer, stop)
        finally:
            await writer.close()

    async def _start_writer(
        self, stop: asyncio.Event
    ) -> tuple[Writer, str | None, str | None] | int:
        """The writer processes started and the database migrated; or the exit code.
        A SQLite database on a full disk is waited for, not given up on."""
        config = self.config
        s = config.storage
        while True:
            self.writer = writer = Writer(
                s.url,
                batch_size=s.batch_size,
                commit_interval=s.commit_interval,
                queue_max_frames=s.queue_max_frames,
                queue_max_bytes=s.queue_max_bytes,
                log_level=config.log.level,
                log_format=config.log.format,
                instance=s.instance,
                unclean=self.unclean,
                used_before=self.used_before,
            )
            try:
                before, after = await writer.start()
                newest = await asyncio.to_thread(frames_since, s.url, None)
                self.first_frame_id = newest or 0
                return writer, before, after
            except WriterError as exc:
                if exc.config_error or not self._full_disk.full(str(exc)):
                    log.error(str(exc), database=display_database(s.url))
                    return 2 if exc.config_error else 1
                if not await self._full_disk.wait(stop, str(exc)):
                    return 0

    async def _run(self, writer: Writer, stop: asyncio.Event) -> int:
        config = self.config
        self.link = link = Link(config, writer)
        self._writer_task = writer_task = asyncio.create_task(writer.run(), name="writer")
        self.proxy = None
        if config.proxy.enabled:
            self.proxy = Proxy(config, writer)
            self.proxy.on_upstream_reached = link.wake
            self.proxy.metrics = lambda: render(self)
            try:
                await self.proxy.start()
            except OSError as exc:
                log.error(
                    "proxy cannot listen",
                    listen=config.proxy.listen,
                    error=exc.strerror or str(exc),
                )
                writer.stop()
                await asyncio.gather(writer_task, return_exceptions=True)
                return 1
        self._metrics_server = None
        if self.proxy is None and config.metrics.listen:
            host, port = split_listen(config.metrics.listen)
            try:
                self._metrics_server = await serve_metrics(self, host, port)
            except OSError as exc:
                log.error("metrics cannot listen", listen=config.metrics.listen, error=exc.strerror)
                writer.stop()
                await asyncio.gather(writer_task, return_exceptions=True)
                return 1
        self._link_task = link_task = asyncio.create_task(link.run(), name="link")
        cleanup = Cleanup(config, writer, link)
        if cleanup.wanted:
            cleanup.start()
            self.cleanup = cleanup
        log.info(
            "recorder started",
            daemon=link.safe_url,
            database=display_database(config.storage.url),
            proxy=config.proxy.listen if self.proxy else None,
            config=config.source,
        )
        # Ready once migrated (done) and the first attempt to connect has ended, so that
        # `systemctl start` returns with something true to say.
        attempted = asyncio.create_task(link.attempted.wait())
        await asyncio.wait(
            (attempted, link_task),
            timeout=config.daemon.open_timeout + 5,
            return_when=asyncio.FIRST_COMPLETED,
        )
        attempted.cancel()
        await beat(self)
        self.notifier.send(READY=1, STATUS=describe(self))
        watcher = asyncio.create_task(watch(self, self.notifier), name="watch")
        self.started.set()
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait((stopper, link_task, writer_task), return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        watcher.cancel()
        return await self.shutdown()

    async def shutdown(self) -> int:
        """The stop, within ``storage.shutdown_timeout`` whatever the daemon, the UIs
        or the disk do: the producers close, the queue drains, and the exit says what
        was lost. Past the timeout the writer processes are killed, so that nothing is
        committed behind the message, and the database is counted."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.storage.shutdown_timeout

        def left() -> float:
            return max(0.0, deadline - loop.time())

        writer, writer_task = self.writer, self._writer_task
        t0 = time.monotonic()
        self.stopping = True
        self.notifier.send(STOPPING=1, STATUS="stopping: committing what is queued")
        if self.reload_task is not None:
            # A reload under way finishes first (it may be replacing the cleanup).
            await finished(self.reload_task, left())
        if self._metrics_server is not None:
            self._metrics_server.close()
        if self.cleanup is not None:
            await finished(asyncio.ensure_future(self.cleanup.stop()), left())
        exit_code = await close_producers(self.link, self._link_task, self.proxy, left)
        if writer_task.done():
            # The writer processes died: stop reading what can no longer be recorded.
            self.notifier.send(STATUS="stopping: the writer processes died")
        writer.stop()
        drained = await finished(writer_task, left(), cancel=False)
        failed = writer_task.exception() if drained else TimeoutError()
        if failed is None and writer.committed < writer.queue.enqueued:
            failed = TimeoutError()  # handed over after the drain (a producer too late)
        if failed is None:
            with contextlib.suppress(Exception):  # `recorder status` knows from the lock too
                await asyncio.wait_for(beat(self, stopped=True), left())
            loss = Loss(writer.queue.enqueued, writer.committed)
            if not await writer.close(left()):
                log.warning(
                    "writer did not stop in time; every frame was committed",
                    timeout=self.config.storage.shutdown_timeout,
                    **loss.fields(),
                )
        else:
            if not writer.kill_and_wait():
                log.error("writer processes did not exit after SIGKILL; counting anyway")
            await finished(writer_task, KILL_WAIT)  # it ends once it sees them gone
            loss = await asyncio.to_thread(
                count, writer, self.config.storage.url, self.first_frame_id, COUNT_WITHIN
            )
            exit_code = say(failed, loss, self.config.storage.shutdown_timeout) or exit_code
        self.said = (exit_code, loss.lost)
        log.info("recorder stopped", **loss.fields(), seconds=round(time.monotonic() - t0, 3))
        return exit_code


async def main(config: Config) -> int:
    """Entry point for ``recorder run``: the service, and its signals.

    SIGTERM or Ctrl-C: stop reading, drain, close (exit 0). A second one during the
    drain: exit at once, saying how many frames were not committed. SIGHUP: reload
    the log level and the cleanup policies from the config file.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    service = Service(config)

    def on_stop() -> None:
        if stop.is_set():
            service.force_exit()
        service.stopping = True  # from the signal on: no reload starts
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_stop)
    loop.add_signal_handler(signal.SIGHUP, service.request_reload)
    running = asyncio.create_task(service.run(stop))
    started = asyncio.create_task(service.started.wait())
    await asyncio.wait((running, started), return_when=asyncio.FIRST_COMPLETED)
    if started.done():
        # Start-up objects live as long as the process: keep the collector off them.
        # Every frame makes a tuple the collector tracks; a larger young generation
        # means far fewer collections at tens of thousands of frames per second.
        # (Here, not in Service: embedding the service must not retune the host's GC.)
        gc.freeze()
        gc.set_threshold(20_000, 50, 50)
    else:
        started.cancel()
    return await running
