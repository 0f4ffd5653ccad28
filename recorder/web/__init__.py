"""The web console: the recordings in a browser, read-only (``recorder web``)."""
