"""Raw frames off a websockets connection: the exact bytes and whether it was text.

``Connection.recv()`` decodes text frames and fails the connection (1007) on
invalid UTF-8; ``recv(decode=False)`` keeps the bytes but forgets the opcode. A
recorder needs both and must survive garbage, so the connection's message
assembler is replaced by one that returns ``(is_text, data)`` without decoding.
Everything else (flow control, fragmentation, close handling) stays websockets'.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Generator
from typing import Any, cast

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.messages import Assembler
from websockets.asyncio.server import ServerConnection
from websockets.client import ClientProtocol
from websockets.exceptions import ConcurrencyError, TooManyFragments
from websockets.frames import CONT, TEXT, CloseCode
from websockets.protocol import OPEN, SERVER, Protocol
from websockets.server import ServerProtocol

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

try:
    from websockets.asyncio.messages import MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets had no limit
    MAX_FRAGMENTS = 1 << 30


class RawAssembler(Assembler):
    """websockets' message assembler, holding frames and, from the fast path, whole
    messages as ``(is_text, data)`` tuples; only the raw getters read it."""

    def put_message(self, message: tuple[bool, bytes]) -> None:
        if self.closed:
            raise EOFError("stream of frames ended")
        self.frames.put(message)  # type: ignore[arg-type]
        self.maybe_pause()

    async def get_raw(self) -> tuple[bool, bytes]:
        """Like ``Assembler.get()``, returning the opcode and the undecoded payload."""
        if self.get_in_progress:
            raise ConcurrencyError("get() or get_iter() is already running")
        self.get_in_progress = True
        try:
            frame: Any = await self.frames.get(not self.closed)
            self.maybe_resume()
            if type(frame) is tuple:
                return frame
            parts = [frame]
            while not frame.fin:
                try:
                    frame = await self.frames.get(not self.closed)
                except asyncio.CancelledError:
                    self.frames.put_back(parts)
                    raise
                self.maybe_resume()
                assert frame.opcode is CONT
                if len(parts) >= MAX_FRAGMENTS:
                    raise TooManyFragments(MAX_FRAGMENTS)
                parts.append(frame)
        finally:
            self.get_in_progress = False
        data = parts[0].data if len(parts) == 1 else b"".join(p.data for p in parts)
        return parts[0].opcode is TEXT, bytes(data)

    def get_raw_nowait(self) -> tuple[bool, bytes] | None:
        """A whole single-frame message already received, or None; never waits."""
        queue = self.frames.queue
        if self.get_in_progress or not queue:
            return None
        head: Any = queue[0]
        if type(head) is tuple:
            queue.popleft()
            self.maybe_resume()
            return head
        if not head.fin:
            return None
        queue.popleft()
        self.maybe_resume()
        return head.opcode is TEXT, bytes(head.data)


class RawFramesMixin:
    """Mixed into websockets' connection classes; adds :meth:`recv_raw`, and
    :attr:`last_data`, when bytes last arrived (a frame still arriving is life)."""

    recv_messages: Any
    last_data: float = 0.0

    def data_received(self, data: bytes) -> None:
        self.last_data = time.monotonic()
        super().data_received(data)  # type: ignore[misc]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        t = cast(asyncio.Transport, transport)
        self.recv_messages = RawAssembler(
            self.max_queue_high,  # type: ignore[attr-defined]
            self.max_queue_low,  # type: ignore[attr-defined]
            pause=t.pause_reading,
            resume=t.resume_reading,
        )

    async def recv_raw(self) -> tuple[bool, bytes]:
        """Next message as ``(is_text, data)``; raises ConnectionClosed at the end."""
        conn = cast(Any, self)
        try:
            return await self.recv_messages.get_raw()  # type: ignore[no-any-return]
        except EOFError:
            pass
        except TooManyFragments as exc:
            conn.set_connection_exc(exc)
            async with conn.send_context():
                conn.protocol.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
        await asyncio.shield(conn.connection_lost_waiter)
        raise conn.close_exc

    def process_event(self, event: Any) -> None:
        if type(event) is tuple:  # a whole message from the fast path
            self.recv_messages.put_message(event)
        else:
            super().process_event(event)  # type: ignore[misc]

    def recv_raw_nowait(self) -> tuple[bool, bytes] | None:
        """The next message if it has already arrived whole, else None."""
        return self.recv_messages.get_raw_nowait()  # type: ignore[no-any-return]

    async def send_many(self, messages: list[tuple[bool, bytes]]) -> None:
        """Send messages as they are (text or binary, bytes unchecked) in one write.

        ``send()`` writes each frame to the socket with its own system call, which
        is most of a relay's cost at high rates; framing several and writing once is
        what websockets does inside a single ``send_context``.
        """
        conn = cast(Any, self)
        async with conn.send_context():
            for is_text, data in messages:
                if is_text:
                    conn.protocol.send_text(data)
                else:
                    conn.protocol.send_binary(data)


class _FastFrames(Protocol):
    """websockets' protocol, with a fast path for plain data frames.

    Mixed in after ClientProtocol or ServerProtocol in the MRO: their parse()
    hands over to :meth:`parse` here once the handshake request or response has
    been read, at the start of the first frame.

    websockets parses each frame with generator-based reads: about 2.1 µs for a
    180-byte frame, against 0.95 µs here (measured), and the biggest part of the
    link's cost per frame. After the handshake, arriving bytes go through
    :meth:`_take_frames` first. It turns the complete, final, uncompressed text and
    binary frames at their head, masked exactly when they come from a client, into
    whole messages, as websockets' parser and assembler would. From the first frame
    that is anything else (control, fragment, reserved bits, wrong masking, over the
    size limit), it hands websockets' parser the rest, whole frames only, so the
    parser always stops at a frame boundary; it keeps an incomplete last frame until
    its remaining bytes arrive. Every rule and error is websockets' own. In any state
    but OPEN, or with an extension, bytes go straight to websockets.
    """

    fast_frames = 0
    _whole_frames = False
    _pending: bytearray

    def parse(self) -> Generator[None]:
        buf = self.reader.buffer
        # A server is still CONNECTING here (its 101 is not sent yet), and a client
        # does not send frames before it has the 101: anything already here came
        # too early and is websockets' business.
        if not buf or self.state is OPEN:
            arrived = bytes(buf)
            buf.clear()
            self._whole_frames = True
            self._pending = bytearray()
            self._take_frames(arrived)
        yield from super().parse()

    def receive_data(self, data: bytes | bytearray) -> None:
        if self._whole_frames and self.state is OPEN and not self.extensions:
            if self._pending:
                self._pending += data
                data, self._pending = self._pending, bytearray()
            self._take_frames(data, step=True)
            return
        self._leave_whole_frames()
        super().receive_data(data)

    def receive_eof(self) -> None:
        self._leave_whole_frames()
        super().receive_eof()

    def _leave_whole_frames(self) -> None:
        if self._whole_frames:
            self._whole_frames = False
            if self._pending:
                self.reader.feed_data(self._pending)
                self._pending = bytearray()

    def _take_frames(self, data: bytes | bytearray, *, step: bool = False) -> None:
        """Frames off ``data``: plain data frames here, the others to websockets' parser.

        With ``step``, the parser runs each time a run of other frames is followed
        by a plain data frame, so events stay in order and the fast path resumes;
        without (from inside the parser), the rest goes to the parser.
        """
        limit = self._size_limit()
        append = cast(Any, self.events).append
        from_client = self.side is SERVER
        end = len(data)
        pos = taken = 0
        slow_from = -1
        with memoryview(data) as view:
            while end - pos >= 2:
                head = data[pos]
                length = data[pos + 1]
                masked = length & 0x80
                length &= 0x7F
                start = pos + 2
                if length == 126:
                    start += 2
                    if start > end:
                        break
                    length = (data[pos + 2] << 8) | data[pos + 3]
                elif length == 127:
                    start += 8
                    if start > end:
                        break
                    length = int.from_bytes(view[pos + 2 : start])
                if limit is not None and length > limit:
                    # websockets fails the connection (1009) on this header.
                    slow_from, pos = self._leave_at(pos if slow_from < 0 else slow_from, end)
                    break
                stop = start + (4 if masked else 0) + length
                if stop > end:
                    break
                plain = (head == 0x81 or head == 0x82) and bool(masked) is from_client
                if plain and slow_from >= 0 and step:
                    if not self._parse_run(view[slow_from:pos]):
                        slow_from, pos = self._leave_at(pos, end)
                        break
                    slow_from = -1
                if plain and slow_from < 0 and self.current_size is None:
                    # The whole message, as RawAssembler hands it out (see process_event).
                    if from_client:
                        payload = apply_mask(view[start + 4 : stop], bytes(view[start : start + 4]))
                    else:
                        payload = bytes(view[start:stop])
                    append((head == 0x81, payload))
                    taken += 1
                elif slow_from < 0:
                    slow_from = pos
                pos = stop
            if slow_from >= 0:
                self.reader.feed_data(bytes(view[slow_from:pos]))
            if pos < end:
                self._pending += view[pos:]
        self.fast_frames += taken
        if step:
            next(self.parser)

    # The rare branches of _take_frames, out of its loop: once per call, or once per
    # run of frames that are not plain data (control frames, fragments, a close).

    def _size_limit(self) -> int | None:
        """The largest payload websockets' parser accepts in one frame (None: any)."""
        limit = self.max_message_size
        if self.max_fragment_size is not None:
            limit = self.max_fragment_size if limit is None else min(limit, self.max_fragment_size)
        return limit

    def _parse_run(self, frames: memoryview) -> bool:
        """Hand websockets' parser a run of whole frames that are not plain data, and
        let it take them before the next plain frame is appended, so events stay in
        order. False when they closed the connection (a close frame, an error)."""
        self.reader.feed_data(bytes(frames))
        next(self.parser)
        return self.state is OPEN

    def _leave_at(self, slow_from: int, end: int) -> tuple[int, int]:
        """Leave the fast path for good: from ``slow_from`` on, every byte of this call
        and of every later one is websockets' (closing, or a frame it will fail).
        Returns the loop's new (slow_from, pos)."""
        self._whole_frames = False
        return slow_from, end


class _FastClientProtocol(ClientProtocol, _FastFrames):
    pass


class _FastServerProtocol(ServerProtocol, _FastFrames):
    pass


class RecordingClientConnection(RawFramesMixin, ClientConnection):
    def __init__(self, protocol: ClientProtocol, *args: Any, **kwargs: Any) -> None:
        # websockets' connect() makes the protocol and starts its parser; the parser
        # reaches _AfterHandshake.parse() only after the handshake, so changing the
        # class here, before any byte arrived, changes nothing before that.
        if type(protocol) is ClientProtocol:
            protocol.__class__ = _FastClientProtocol
        super().__init__(protocol, *args, **kwargs)


class RecordingServerConnection(RawFramesMixin, ServerConnection):
    def __init__(self, protocol: ServerProtocol, *args: Any, **kwargs: Any) -> None:
        if type(protocol) is ServerProtocol:  # see RecordingClientConnection
            protocol.__class__ = _FastServerProtocol
        super().__init__(protocol, *args, **kwargs)
