"""A simulated orchestrator daemon, for tests, benchmarks and demos.

It speaks the daemon's WebSocket protocol, as the Neolith daemon-integration
document describes it, and reproduces what a real daemon (1.0.39) was observed to send:
the health check on connect, broadcasts of ``session_status_update`` to every
client, ``session_spawned`` only after the first task finished, the task
frames whose ``taskId`` is the task text, the error texts, HTTP rejections with
JSON bodies and the close codes. The streaming frames (``stream_*`` and
``tool_call_*``), which that daemon version did not wire in, follow the seed
document.

On top of that it can misbehave on purpose (forced disconnects, a firehose of
frames, garbage injected by tests) and it keeps a journal of every frame it
sent or received, so tests can compare what a recorder stored with what was
actually on the wire.

Modules: ``options`` (what shapes it), ``frames`` (what it sends), ``auth``,
``plans`` (what a task streams), ``sessions``, ``server`` (sockets, journal,
firehose) and ``daemon`` (the behaviour).
"""

from recorder.protocol.daemon import HEALTH_CHECK_FRAME, dumps
from recorder.simulator.auth import authenticate
from recorder.simulator.daemon import Simulator, serve
from recorder.simulator.frames import firehose_template
from recorder.simulator.options import JournalEntry, SimulatorOptions
from recorder.simulator.plans import TaskPlan, plan_task
from recorder.simulator.sessions import SimSession
from recorder.times import iso_from_ms

__all__ = [
    "HEALTH_CHECK_FRAME",
    "JournalEntry",
    "SimSession",
    "Simulator",
    "SimulatorOptions",
    "TaskPlan",
    "authenticate",
    "dumps",
    "firehose_template",
    "iso_from_ms",
    "plan_task",
    "serve",
]
