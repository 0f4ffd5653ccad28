"""The long-running service: its lifecycle, and (as they land) its operations."""

from recorder.service.lifecycle import Service, main

__all__ = ["Service", "main"]
