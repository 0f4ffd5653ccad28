"""The long-running service: :meth:`Service.startup`, :meth:`Service.main_loop`,
:meth:`Service.shutdown`.

Signal handlers only set an event (:func:`main`); a second one forces the exit. The
stop closes the link and the proxy (recording whatever the daemon sends before its
close frame), then drains the writer's queue, all within
``storage.shutdown_timeout``, and says what it cost (``stopping.py``). A start on a
full disk waits for room (``space.py``); SIGHUP reloads (``reloading.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import time
from typing import Any

import structlog

from recorder.addresses import split_listen
from recorder.capture.link import Link
from recorder.capture.proxy import Proxy
from recorder.cleanup.jobs import Cleanup, loaded
from recorder.config import Config
from recorder.db.backend import backend, display_database
from recorder.db.locks import AlreadyRunning, InstanceLock
from recorder.db.readonly import frames_since
from recorder.pipeline.ops import Heartbeat, Ping
from recorder.pipeline.writer import KILL_WAIT, Writer, WriterError
from recorder.service.exporting import Exporting, exporting
from recorder.service.metrics import render, serve_metrics
from recorder.service.notify import Notifier
from recorder.service.reloading import Reloads
from recorder.service.snapshot import Snapshot, taken
from recorder.service.space import FULL_ERRNOS, FullDisk, measured
from recorder.service.stopping import (
    COUNT_WITHIN,
    Loss,
    at_once,
    close_producers,
    count,
    finished,
    say,
)
from recorder.service.watch import Watched, watch
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
        # The database's size, measured beside the heartbeat, for /metrics.
        self.database_bytes: int | None = None
        # The newest frame id before this run: what this run stored is after it.
        self.first_frame_id = 0
        # The last run on this database did not stop cleanly, and one had run at all.
        self.unclean = self.used_before = False
        # Set once the stop has begun: no reload starts after it.
        self.stopping = False
        # (exit code, frames lost) once the stop has said what it cost: a second
        # signal after it has nothing new to say.
        self.said: tuple[int, int] | None = None
        self.reloads = Reloads(self)
        self._full_disk = FullDisk(config.storage.url, self.notifier)
        self._writer_task: asyncio.Task[None]
        self._link_task: asyncio.Task[None]
        self._metrics_server: Any = None
        # The web console, when [web] listen asks for it (recorder.web.server.Embedded),
        # and the alerts, with rules or a digest (recorder.service.alerting.Alerting).
        self.console: Any = None
        self.alerting: Any = None
        self.exporting: Exporting | None = None  # with [otel] endpoint

    # --- the run ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        lock = backend(self.config.storage.url).lock(self.config.storage.instance)
        code = await self._locked(lock, stop)
        if code is not None:
            return code
        code = 1
        try:
            code = await self.startup(stop)
            if code is None:
                await self.main_loop(stop)
                code = await self.shutdown()
            return code
        finally:
            if hasattr(self, "writer"):
                await self.writer.close()
            # "Stopped cleanly" only when it did: a writer that failed (a corrupt file,
            # a killed process) leaves the next start its quick_check.
            with contextlib.suppress(OSError):  # a full disk: the next start checks
                await lock.release(clean=code == 0, refused=code == 2)

    async def startup(self, stop: asyncio.Event) -> int | None:
        """The database migrated and its writer running, the proxy and /metrics
        listening, the link dialling, the cleanup scheduled, and READY=1 once the first
        attempt to connect is over; or the exit code of a start that cannot go on."""
        code = await self._start_writer(stop)
        if code is not None:
            return code
        config, writer = self.config, self.writer
        dangling = await writer.close_dangling()
        if dangling:
            log.warning("marked connections left open by an unclean stop", count=dangling)
        self.link = link = Link(config, writer)
        self._writer_task = asyncio.create_task(writer.run(), name="writer")
        if not await self._listen():
            writer.stop()
            await asyncio.gather(self._writer_task, return_exceptions=True)
            return 1
        self._link_task = asyncio.create_task(link.run(), name="link")
        cleanup = Cleanup(config, writer, link)
        if cleanup.wanted:
            cleanup.start()
            self.cleanup = cleanup
        if config.alerts.rules or config.report.schedule:
            from recorder.service.alerting import alerting

            self.alerting = alerting(config, writer, self.snapshot)
        self.exporting = exporting(config, writer)
        await self.beat()  # at once: a previous run's row must not speak for this one
        log.info(
            "recorder started",
            daemon=link.safe_url,
            database=display_database(config.storage.url),
            proxy=config.proxy.listen if self.proxy else None,
            config=config.source,
        )
        # Ready once the first attempt to connect has ended, so that `systemctl start`
        # returns with something true to say.
        attempted = asyncio.create_task(link.attempted.wait())
        await asyncio.wait(
            (attempted, self._link_task),
            timeout=config.daemon.open_timeout + 5,
            return_when=asyncio.FIRST_COMPLETED,
        )
        attempted.cancel()
        await self.beat()
        self.notifier.send(READY=1, STATUS=self.snapshot().describe())
        return None

    async def main_loop(self, stop: asyncio.Event) -> None:
        """Until ``stop`` is set, or the link gives up, or the writer processes die;
        meanwhile STATUS=, the watchdog and the heartbeat (``watch.py``)."""
        watched = Watched(self.snapshot, self._ping, self.refresh)
        watcher = asyncio.create_task(watch(watched, self.notifier), name="watch")
        self.started.set()
        stopper = asyncio.create_task(stop.wait())
        ends = (stopper, self._link_task, self._writer_task)
        await asyncio.wait(ends, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        watcher.cancel()

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
        for part in (self.console, self.alerting, self.exporting):
            if part is not None:
                await finished(asyncio.ensure_future(part.stop()), left())
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
                await asyncio.wait_for(self.beat(stopped=True), left())
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

    # --- what the service says of itself -----------------------------------------------

    def snapshot(self) -> Snapshot:
        """What it is doing now: for /metrics, STATUS= and the heartbeat row."""
        return taken(self.writer, self.link, self.proxy, self.database_bytes)

    async def beat(self, *, stopped: bool = False) -> None:
        """The heartbeat row (`recorder status`): at start, every few seconds, at the stop."""
        import json

        cleanup = loaded(self.cleanup, self.config)
        info = self.snapshot().heartbeat() | {"stopped": stopped, "cleanup": cleanup}
        row = Heartbeat(
            self.config.storage.instance,
            os.getpid(),
            socket.gethostname(),
            self.started_us,
            now_us(),
            json.dumps(info),
        )
        await self.writer.perform(row)

    async def refresh(self) -> None:
        """The heartbeat row, and the database's size for /metrics."""
        await self.beat()
        self.database_bytes = await measured(self.writer, self.config.storage.url)

    async def _ping(self) -> None:
        await self.writer.perform(Ping())

    # --- starting ----------------------------------------------------------------------

    async def _locked(self, lock: InstanceLock, stop: asyncio.Event) -> int | None:
        """The instance lock taken (None); or the exit code: another recorder holds
        it (1), the database cannot be reached (1), the stop came first (0). A full
        disk with no room for the lock file is waited out."""
        shown = display_database(self.config.storage.url)
        try:
            while True:
                try:
                    await lock.acquire()
                    break
                except OSError as exc:
                    if exc.errno not in FULL_ERRNOS:
                        raise
                    await self._full_disk.wait(stop, exc.strerror or str(exc))
                    if stop.is_set():
                        return 0
        except AlreadyRunning as exc:
            log.error(str(exc))
            return 1
        except (OSError, TimeoutError) as exc:
            log.error(f"cannot use database {shown}: {getattr(exc, 'strerror', None) or exc}")
            return 1
        except Exception as exc:  # the server refused us (its driver's errors)
            log.error(f"cannot use database {shown}: {type(exc).__name__}: {exc}".splitlines()[0])
            return 1
        self.unclean, self.used_before = lock.unclean, lock.used_before
        return None

    async def _start_writer(self, stop: asyncio.Event) -> int | None:
        """The writer processes started and the database migrated (None); or the exit
        code. A SQLite database on a full disk is waited for, not given up on."""
        config, s = self.config, self.config.storage
        while True:
            self.writer = writer = Writer.of(
                config, unclean=self.unclean, used_before=self.used_before
            )
            try:
                before, after = await writer.start()
                newest = await asyncio.to_thread(frames_since, s.url, None)
                self.first_frame_id = newest or 0
            except WriterError as exc:
                if exc.config_error or not self._full_disk.full(str(exc)):
                    log.error(str(exc), database=display_database(s.url))
                    return 2 if exc.config_error else 1
                if not await self._full_disk.wait(stop, str(exc)):
                    return 0
                continue
            if before != after:
                shown = display_database(s.url)
                log.info(
                    "database migrated", database=shown, revision_from=before, revision_to=after
                )
            return None

    async def _listen(self) -> bool:
        """The proxy, or /metrics on its own port when the proxy is off, and the web
        console; False (said) when one cannot listen."""
        config = self.config
        if config.proxy.enabled:
            self.proxy = Proxy(config, self.writer)
            self.proxy.on_upstream_reached = self.link.wake
            self.proxy.metrics = lambda: render(self.snapshot())
            try:
                await self.proxy.start()
            except OSError as exc:
                error = exc.strerror or str(exc)
                log.error("proxy cannot listen", listen=config.proxy.listen, error=error)
                return False
        elif config.metrics.listen:
            host, port = split_listen(config.metrics.listen)
            token = config.metrics.token
            try:
                self._metrics_server = await serve_metrics(self.snapshot, token, host, port)
            except OSError as exc:
                log.error("metrics cannot listen", listen=config.metrics.listen, error=exc.strerror)
                return False
        if config.web.listen:
            from recorder.web.server import embedded  # its imports only when it is wanted

            self.console = await embedded(config.storage.url, config.web)
        return self.console is not None or not config.web.listen

    # --- signals -----------------------------------------------------------------------

    @property
    def reload_task(self) -> asyncio.Task[None] | None:
        return self.reloads.task

    def request_reload(self) -> None:
        """SIGHUP (see :class:`~recorder.service.reloading.Reloads`)."""
        self.reloads.request()

    async def reload(self) -> None:
        await self.reloads.reload()

    def force_exit(self) -> None:
        """A second stop signal: leave now, and say what is true at this moment. Once
        the stop has said what it cost, that stands; before, the writer processes are
        killed (nothing more is committed) and the database counted, here, with
        nothing else running. With nothing lost the stop stays a clean one: exit 0,
        as the first signal would have."""
        at_once(
            self.said, getattr(self, "writer", None), self.config.storage.url, self.first_frame_id
        )


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
