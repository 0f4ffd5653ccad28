"""orchestrator-recorder: records every frame of an AI-agent orchestrator daemon."""

from __future__ import annotations

__version__ = "0.1.0"
