"""Cleanup policies: which recorded sessions to stop on the daemon, compact or purge,
and when. ``policy`` (parsing and matching) is pure; ``jobs`` runs policies inside the
service on a schedule, through its one writer and its link."""
