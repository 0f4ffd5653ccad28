"""From a captured frame to a committed row: queue, batches, and the writer processes.

Producers (the link, the proxy) hand frames to :class:`~recorder.pipeline.writer.Writer`
and never wait for the database unless its bounded queue is full. Batches travel
down a line of two child processes (classifier, then database) as typed
operations (:mod:`recorder.pipeline.ops`), each of which knows how to run itself;
answers come back the same way, in order.
"""
