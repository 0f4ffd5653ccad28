"""The long-running service: migrate, then run the writer and the link until told to stop.

Signal handlers only set an event. Shutdown closes the link (recording whatever
the daemon sends before its close frame), then drains the writer's queue within
``storage.shutdown_timeout`` and says what it did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import time

import structlog

from recorder import logs
from recorder.addresses import display_database, split_listen
from recorder.capture.link import Link, LinkGaveUp
from recorder.capture.proxy import Proxy
from recorder.cleanup.jobs import Cleanup
from recorder.cleanup.settings import check_schedules
from recorder.config import Config, ConfigError, load_config
from recorder.db.reader import frames_since, sqlite_file
from recorder.pipeline.writer import Writer, WriterError
from recorder.protocol.policy import PolicyError
from recorder.service.instance import AlreadyRunning, InstanceLock, PostgresInstanceLock
from recorder.service.metrics import render, serve_metrics
from recorder.service.notify import Notifier
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
        # The exit code once the writer has drained (None before): a second signal
        # after it has nothing left to lose.
        self.drained: int | None = None
        self.reload_task: asyncio.Task[None] | None = None
        self._reload_again = False

    def force_exit(self) -> None:
        """A second stop signal: leave now, and say what is lost. With nothing lost
        (the queue drained, or nothing was ever queued) the stop stays a clean one:
        exit 0, as the first signal would have."""
        writer = getattr(self, "writer", None)
        lost = writer.queue.enqueued - writer.committed if writer is not None else 0
        if self.drained is not None:
            # The queue is drained and what it cost is said: only the last steps
            # (the heartbeat, the writer's stop) are cut short.
            code = self.drained
            log.warning("stopping at once on a second signal; the queue was already drained")
        elif lost == 0 and (writer is None or writer.died is None):
            code = 0
            log.warning("stopping at once on a second signal; nothing was lost", lost=0)
        else:
            code = 1
            log.error("stopping at once on a second signal; frames were not committed", lost=lost)
        if writer is not None:
            writer.kill()
        os._exit(code)

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
            previous = self.cleanup
            if previous is not None:
                await previous.stop()
            cleanup = Cleanup(new, self.writer, self.link, previous=previous)
            self.cleanup = None
            if cleanup.wanted:
                cleanup.start()
                self.cleanup = cleanup
            self.config = dataclasses.replace(self.config, log=new.log, cleanup=new.cleanup)
            removed = sorted(set(previous.policies if previous else ()) - set(cleanup.policies))
            # An emptied file, or one whose [cleanup] went missing, is easy to reload
            # by mistake: say what stops being done, louder than the routine line.
            (log.warning if removed else log.info)(
                "configuration reloaded" + ("; cleanup policies removed" if removed else ""),
                config=new.source,
                log_level=new.log.level,
                policies=len(cleanup.policies),
                removed=removed or None,
            )

    async def run(self, stop: asyncio.Event) -> int:
        """Run until ``stop`` is set; returns the process exit code."""
        url = self.config.storage.url
        shown = display_database(url)
        lock: InstanceLock | None = None
        pg_lock: PostgresInstanceLock | None = None
        try:
            if url.startswith("sqlite"):
                lock = InstanceLock(sqlite_file(url), shown)
                lock.acquire()
            else:
                pg_lock = PostgresInstanceLock(url, self.config.storage.instance, shown)
                await pg_lock.acquire()
        except AlreadyRunning as exc:
            log.error(str(exc))
            return 1
        except (OSError, TimeoutError) as exc:
            log.error(f"cannot use database {shown}: {getattr(exc, 'strerror', None) or exc}")
            return 1
        except Exception as exc:  # the server refused us (asyncpg's errors)
            log.error(f"cannot use database {shown}: {type(exc).__name__}: {exc}".splitlines()[0])
            return 1
        self.unclean = lock is not None and lock.unclean
        self.used_before = lock is not None and lock.used_before
        code = 1
        try:
            code = await self._with_writer(stop)
            return code
        finally:
            if lock is not None:
                # "Stopped cleanly" only when it did: a writer that failed (a corrupt
                # file, a killed process) leaves the next start its quick_check.
                lock.release(clean=code == 0, refused=code == 2)
            if pg_lock is not None:
                await pg_lock.release()

    async def _with_writer(self, stop: asyncio.Event) -> int:
        config = self.config
        s = config.storage
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
        except WriterError as exc:
            log.error(str(exc), database=display_database(s.url))
            return 2 if exc.config_error else 1
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

    async def _run(self, writer: Writer, stop: asyncio.Event) -> int:
        config = self.config
        s = config.storage
        self.link = link = Link(config, writer)
        writer_task = asyncio.create_task(writer.run(), name="writer")
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
        metrics_server = None
        if self.proxy is None and config.metrics.listen:
            host, port = split_listen(config.metrics.listen)
            try:
                metrics_server = await serve_metrics(self, host, port)
            except OSError as exc:
                log.error("metrics cannot listen", listen=config.metrics.listen, error=exc.strerror)
                writer.stop()
                await asyncio.gather(writer_task, return_exceptions=True)
                return 1
        link_task = asyncio.create_task(link.run(), name="link")
        cleanup = Cleanup(config, writer, link)
        if cleanup.wanted:
            cleanup.start()
            self.cleanup = cleanup
        log.info(
            "recorder started",
            daemon=link.safe_url,
            database=display_database(s.url),
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
        self.stopping = True
        self.notifier.send(STOPPING=1, STATUS="stopping: committing what is queued")
        if self.reload_task is not None:
            # A reload under way finishes first (it may be replacing the cleanup).
            await asyncio.gather(self.reload_task, return_exceptions=True)
        if metrics_server is not None:
            metrics_server.close()
        exit_code = 0
        t0 = time.monotonic()
        if self.cleanup is not None:
            await self.cleanup.stop()
        link.stop()
        if self.proxy is not None:
            # Closes every UI with 1001, and each of their upstream connections.
            await self.proxy.stop()
        try:
            async with asyncio.timeout(10):
                await link_task
        except LinkGaveUp as exc:
            log.error(str(exc))
            exit_code = 1
        except TimeoutError:
            log.error("link did not close within 10 s; abandoning it")
        except Exception:
            log.exception("link failed")
            exit_code = 1
        pending = writer.queued
        if writer_task.done():
            # The writer processes died: stop reading what can no longer be recorded.
            self.notifier.send(STATUS="stopping: the writer processes died")
        writer.stop()
        try:
            async with asyncio.timeout(s.shutdown_timeout):
                await writer_task
        except TimeoutError:
            lost = writer.queue.enqueued - writer.committed
            (log.error if lost else log.warning)(
                "writer did not drain in time; frames were lost"
                if lost
                else "writer did not stop in time; every frame was committed",
                lost=lost,
                timeout=s.shutdown_timeout,
            )
            exit_code = 1 if lost else exit_code
        except WriterError as exc:
            # Batches in flight may have been committed without their answer coming
            # back: the database itself says how many frames of this run it holds.
            stored = await asyncio.to_thread(frames_since, s.url, self.first_frame_id)
            committed = writer.committed if stored is None else stored
            log.error(
                "database writer failed; frames were lost",
                error=str(exc),
                lost=writer.queue.enqueued - committed,
                received=writer.queue.enqueued,
                stored=committed,
            )
            exit_code = 1
        self.drained = exit_code
        try:
            await beat(self, stopped=True)
        except Exception:
            pass  # the writer has gone; `recorder status` knows from the lock anyway
        log.info(
            "recorder stopped",
            drained=pending,
            committed=writer.committed,
            seconds=round(time.monotonic() - t0, 3),
        )
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
