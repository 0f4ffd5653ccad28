"""Recorded sessions as OpenTelemetry traces (issue 22): the mapping of a session to
spans (pure, :mod:`recorder.otel.fold`), reading it (:mod:`recorder.otel.trace`), and
sending spans over OTLP/HTTP or writing them as OTLP JSON lines
(:mod:`recorder.otel.send`). The OpenTelemetry libraries are imported only by the
modules that send: the CLI's startup and the configuration never pay for them."""
