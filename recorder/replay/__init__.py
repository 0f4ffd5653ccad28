"""Replay a recorded session: to the terminal, to a UI as the daemon, or back to a
live daemon; and export it as JSONL or an asciicast.

``plan`` (which frames, and their timeline) and ``timing`` (pauses) are pure;
``source`` reads the database; the players are the I/O edges.
"""
