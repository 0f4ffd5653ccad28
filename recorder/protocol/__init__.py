"""The daemon's protocol as pure code: frames, classification, index deltas.

Nothing here does I/O, so every rule is tested without sockets or databases.
Frames are never re-serialized: classification only reads them.
"""
