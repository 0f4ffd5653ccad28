"""The parts of ``bench/alerts.py`` beside the recorder: the webhook it delivers to
(:class:`Hook`, answering at once or never), the ``[alerts]`` table it records with
(:func:`alerts_config`), and the classifier timed with and without those rules in
this process (:func:`classifier_rates`)."""

from __future__ import annotations

import http.server
import threading
import time
from typing import Any

# A target that hangs holds each request this long without a byte of answer (the
# issue's "a target that hangs for 30 s"), unless the benchmark closes it first.
HANG_S = 30.0
# The rules' names, as the outbox stores them.
CHUNK_RULE = "bench-chunks"
STATUS_RULE = "bench-failed"


class Hook:
    """A webhook on 127.0.0.1 that counts the POSTs it gets and answers each at once
    (200, empty), or, with ``hang``, reads it and answers nothing for HANG_S."""

    def __init__(self, hang: bool) -> None:
        self.posts = 0
        self.closed = threading.Event()
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with lock:
                    hook.posts += 1
                if hang:
                    hook.closed.wait(HANG_S)
                    self.close_connection = True
                    return
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a line per POST would be the benchmark's own noise

        lock = threading.Lock()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


def alerts_config(url: str, every: float) -> str:
    """Rules that fire on the firehose: its ``stream_chunk`` frames, at most once per
    ``every`` seconds for its one session (``repeat``), and a session_status rule,
    which reads no firehose frame; both notify the one target at ``url``."""
    return (
        f'\n[alerts.targets]\nhook = "{url}"\n'
        f'[[alerts.rules]]\nname = "{CHUNK_RULE}"\nwhen = {{ frame_type = ["stream_chunk"] }}\n'
        f'notify = ["hook"]\nrepeat = "{every:.6f}s"\n'
        f'[[alerts.rules]]\nname = "{STATUS_RULE}"\nwhen = {{ session_status = ["failed"] }}\n'
        'notify = ["hook"]\n'
    )


def classifier_rates(frames: int, every: float, batch: int = 2000) -> dict[str, float]:
    """Frames/s of the writer's classifier (``Classifier.rows_and_index``) over the
    firehose's frames in batches of ``batch``: without rules, with the status rule
    alone (no firehose frame is of a type it reads), and with the benchmark's rules;
    the best of three passes each, and the alerts the last raised."""
    from recorder.alerts.rules import Rules
    from recorder.config.alerts import parse_alerts
    from recorder.pipeline.classifier import Classifier
    from recorder.protocol.frames import IN
    from recorder.simulator import firehose_template

    prefix, suffix = firehose_template("bench-session", 180, frames)
    t0 = time.time_ns() // 1000
    # About 110 000 frames/s apart, as a recorder receives them.
    tuples = [
        (1, i + 1, IN, t0 + i * 9, i * 9000, True, f"{prefix}{i}{suffix}".encode())
        for i in range(frames)
    ]
    target = {"hook": "json://127.0.0.1:9/hook"}
    chunk = {"name": CHUNK_RULE, "when": {"frame_type": ["stream_chunk"]}, "notify": ["hook"]}
    status = {"name": STATUS_RULE, "when": {"session_status": ["failed"]}, "notify": ["hook"]}
    rule_sets: dict[str, list[dict[str, Any]]] = {
        "none": [],
        "status rule": [status],
        "bench rules": [chunk | {"repeat": f"{every:.6f}s"}, status],
    }
    out: dict[str, float] = {}
    for name, rules in rule_sets.items():
        best, raised = float("inf"), 0
        for _ in range(3):
            config = parse_alerts({"targets": target, "rules": rules}, {})
            classifier = Classifier(Rules.from_config(config) if rules else None)
            raised, start = 0, time.perf_counter()
            for i in range(0, frames, batch):
                raised += len(classifier.rows_and_index(tuples[i : i + batch])[1].alerts)
            best = min(best, time.perf_counter() - start)
        out[f"{name} fps"], out[f"{name} alerts"] = frames / best, raised
    return out
