from __future__ import annotations

from recorder.cli import main

main()
