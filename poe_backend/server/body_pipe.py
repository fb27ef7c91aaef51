"""A request body handed from the event loop to the one thread that extracts it.

The event loop puts the body's pieces in (:meth:`BodyPipe.put`, waiting while
:data:`PIPE_BYTES` are buffered: the client is slowed, memory stays bounded); the thread
reads them as a forward-only binary file (``read``/``peek``/``tell`` and forward ``seek``,
all that :mod:`tarfile`'s random-access mode and :class:`gzip.GzipFile` use on a tar read in
order). The thread waits only for this pipe, and the event loop ends the pipe on every
outcome (:meth:`close`: the end of the body, or with an error: a stall, a disconnect, a size
limit), so a stalled client never holds the thread past the loop's read timeout. Once the
thread has stopped reading (:meth:`reader_done`: finished, or refused the tar), what still
arrives is dropped, so the loop can read the body to its end before it answers.
"""

from __future__ import annotations

import asyncio
import collections
import io
import threading

#: Most body bytes buffered between the event loop and the extracting thread.
PIPE_BYTES = 8 << 20


class BodyEnded(Exception):
    """The body ended early (the event loop gave up on it); the reader stops."""


class BodyPipe:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._chunks: collections.deque[bytes] = collections.deque()  # pieces as received: never copied on the way in
        self._head = 0  # bytes of _chunks[0] read already
        self._buffered = 0  # bytes in _chunks not read yet
        self._position = 0  # bytes read so far
        self._changed = threading.Condition()
        self._closed = False
        self._error: BaseException | None = None
        self._reader_gone = False
        self._room = asyncio.Event()
        self._room.set()
        self._loop_waits = False

    # ---- the event loop's side --------------------------------------------------------
    async def put(self, chunk: bytes) -> None:
        """Add ``chunk``; waits while the buffer is full (dropped once the reader is done)."""
        await self._room.wait()
        with self._changed:
            if self._reader_gone:
                return
            self._chunks.append(chunk)
            self._buffered += len(chunk)
            if self._buffered >= PIPE_BYTES:
                self._room.clear()
                self._loop_waits = True
            self._changed.notify()

    def close(self, error: BaseException | None = None) -> None:
        """The body has ended: completely (``error`` None: the reader gets the rest, then
        end of file), or not (the reader's next read raises :class:`BodyEnded`)."""
        with self._changed:
            self._closed = True
            self._error = None if error is None else BodyEnded(str(error))
            self._changed.notify()

    # ---- the reading thread's side ----------------------------------------------------
    def reader_done(self) -> None:
        """The reader will read no more: later pieces are dropped, and a waiting put returns."""
        with self._changed:
            self._reader_gone = True
            self._chunks.clear()
            self._buffered = 0
        self._loop.call_soon_threadsafe(self._room.set)

    def _wait_for(self, size: int) -> None:
        while self._buffered < size and not self._closed:
            self._changed.wait()
        if self._error is not None:
            raise self._error

    def _take(self, size: int) -> bytes:
        """Read up to ``size`` buffered bytes, from as many pieces as they span (one copy;
        none when they are exactly one whole piece)."""
        parts, wanted = [], min(size, self._buffered)
        while wanted:
            chunk = self._chunks[0]
            part = memoryview(chunk)[self._head : self._head + wanted]
            parts.append(chunk if len(part) == len(chunk) else part)
            wanted -= len(part)
            self._head += len(part)
            if self._head == len(chunk):
                self._chunks.popleft()
                self._head = 0
        data = parts[0] if len(parts) == 1 and isinstance(parts[0], bytes) else b"".join(parts)
        self._buffered -= len(data)
        self._position += len(data)
        return data

    def peek(self, size: int) -> bytes:
        """The next ``size`` bytes (fewer at the end), without reading them."""
        with self._changed:
            self._wait_for(size)
            head = bytearray()
            for index, chunk in enumerate(self._chunks):
                start = self._head if index == 0 else 0
                head += memoryview(chunk)[start : start + size - len(head)]
                if len(head) == size:
                    break
            return bytes(head)

    def read(self, size: int) -> bytes:
        """The next ``size`` bytes (0 <= ``size`` <= :data:`PIPE_BYTES`; fewer only at the
        end of the body)."""
        if not 0 <= size <= PIPE_BYTES:
            raise io.UnsupportedOperation(f"a body pipe reads 0 to {PIPE_BYTES} bytes at a time, not {size}")
        with self._changed:
            self._wait_for(size)
            data = self._take(size)
            if self._loop_waits and self._buffered < PIPE_BYTES:
                self._loop_waits = False
                self._loop.call_soon_threadsafe(self._room.set)
        return data

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Forward only: skips (reads and drops) up to the new position."""
        target = offset if whence == io.SEEK_SET else self._position + offset if whence == io.SEEK_CUR else -1
        if target < self._position:
            raise io.UnsupportedOperation("a body pipe seeks forward only")
        while self._position < target and self.read(min(target - self._position, 1 << 20)):
            pass
        return self._position

    def readable(self) -> bool:
        return True
