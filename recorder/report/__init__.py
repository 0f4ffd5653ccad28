"""``recorder report``: what a window of time held, in one document.

:func:`build_report` reads a window through the read library and aggregates it (pure,
:func:`recorder.report.build.aggregate`); :func:`render` writes it as text, markdown,
JSON or standalone HTML. A scheduled digest reuses both.
"""

from recorder.report.build import Report, build_report
from recorder.report.render import FORMATS, render

__all__ = ["FORMATS", "Report", "build_report", "render"]
