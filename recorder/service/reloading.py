"""SIGHUP: the log level and the cleanup policies, reloaded from the same file while
the service runs; a broken file is logged and the running configuration kept."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING

import structlog

from recorder import logs
from recorder.cleanup.jobs import Cleanup
from recorder.cleanup.settings import check_schedules
from recorder.config import Config, ConfigError, load_config
from recorder.pipeline.alert_ops import ReloadRules
from recorder.protocol.policy import PolicyError
from recorder.service.exporting import reexport

if TYPE_CHECKING:
    from recorder.service.lifecycle import Service

log = structlog.get_logger("recorder.service")


class Reloads:
    """One reload at a time. One asked for while another runs follows it (once,
    however many were asked for: it reads the newest file). Before the service has
    started, and once its stop has begun, there is nothing to reload."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.task: asyncio.Task[None] | None = None
        self._again = False

    def request(self) -> None:
        service = self.service
        if service.stopping or not service.started.is_set():
            state = "stopping" if service.stopping else "starting"
            log.info(f"reload ignored: the recorder is {state}")
            return
        if self.task is not None and not self.task.done():
            self._again = True
            return
        self.task = asyncio.get_running_loop().create_task(self._reloads(), name="reload")

    async def _reloads(self) -> None:
        while True:
            self._again = False
            await self.reload()
            if not self._again or self.service.stopping:
                return

    async def reload(self) -> None:
        """READY=1 follows RELOADING=1 whatever happens, or systemd would show the
        unit reloading for ever."""
        notifier = self.service.notifier
        notifier.send(RELOADING=1, MONOTONIC_USEC=time.monotonic_ns() // 1000)
        try:
            await self._reload()
        except Exception as exc:
            log.error("reload failed", error=f"{type(exc).__name__}: {exc}".splitlines()[0])
        finally:
            try:
                status = self.service.snapshot().describe()
            except Exception:
                status = "running"
            notifier.send(READY=1, STATUS=status)

    async def _alerts(self, new: Config) -> None:
        """The alert rules, targets and digest as the file says now (started if it has
        rules or a digest and the service had neither; left running with none, which
        raise nothing)."""
        service = self.service
        if service.alerting is not None:
            await service.alerting.reload(new)
        elif new.alerts.rules or new.report.schedule:
            from recorder.service.alerting import alerting

            await service.writer.perform(ReloadRules(new.alerts))
            service.alerting = alerting(new, service.writer, service.snapshot)

    async def _reload(self) -> None:
        service = self.service
        source = service.config.source
        try:
            new = load_config(None if source == "<defaults>" else source)
            check_schedules(new.cleanup.policies)
        except (ConfigError, PolicyError, OSError) as exc:
            error = str(exc) if not isinstance(exc, OSError) else f"{source}: {exc}"
            log.error("configuration not reloaded; keeping the running one", error=error)
            return
        logs.configure(new.log.level, new.log.format)
        before = set(service.cleanup.policies) if service.cleanup is not None else set()
        if service.cleanup is not None:
            # The running schedule takes the new policies: runs in progress (asked for
            # by `recorder cleanup run`, or scheduled) finish as they began.
            service.cleanup.apply(new)
        else:
            cleanup = Cleanup(new, service.writer, service.link)
            if cleanup.wanted:
                cleanup.start()
                service.cleanup = cleanup
        await self._alerts(new)
        service.exporting = await reexport(service.exporting, new, service.writer)
        service.config = dataclasses.replace(
            service.config,
            log=new.log,
            cleanup=new.cleanup,
            alerts=new.alerts,
            report=new.report,
            otel=new.otel,
        )
        now = set(service.cleanup.policies) if service.cleanup is not None else set()
        removed = sorted(before - now)
        try:
            # At once, not at the next beat: `recorder cleanup policies` reads what is
            # loaded from it, and would call the file's edits not yet reloaded.
            await service.beat()
        except Exception as exc:
            log.warning("could not write the heartbeat", error=str(exc))
        # An emptied file, or one whose [cleanup] went missing, is easy to reload by
        # mistake: say what stops being done, louder than the routine line.
        (log.warning if removed else log.info)(
            "configuration reloaded" + ("; cleanup policies removed" if removed else ""),
            config=new.source,
            log_level=new.log.level,
            policies=len(now),
            removed=removed or None,
        )
