"""The pipe between the event loop and an upload's extracting thread: bytes arrive whole
and in order through any piece and read sizes, memory stays bounded, and every way the
body ends reaches the reader."""

from __future__ import annotations

import asyncio
import os
import random
import threading

import pytest

from poe_backend.server.body_pipe import PIPE_BYTES, BodyEnded, BodyPipe


def _feed_and_read(data: bytes, read_sizes: list[int]) -> tuple[bytes, bytes, int]:
    """Put ``data`` in random pieces while a thread peeks, skips 5 bytes, and reads with
    ``read_sizes`` in turn; returns the peeked head, the bytes read and the most bytes
    ever buffered."""
    seen, most = [], [0]

    async def main() -> None:
        pipe = BodyPipe(asyncio.get_running_loop())

        def reader() -> None:
            seen.append(pipe.peek(2))
            pipe.seek(5)
            seen.append(data[:5])
            sizes = iter(read_sizes * len(data))
            while chunk := pipe.read(next(sizes)):
                seen.append(chunk)
                most[0] = max(most[0], pipe._buffered)
            pipe.reader_done()

        thread = threading.Thread(target=reader)
        thread.start()
        pieces = random.Random(0)
        position = 0
        while position < len(data):
            size = pieces.choice([1, 1000, 65536, 262144])
            await pipe.put(data[position : position + size])
            position += size
        pipe.close()
        await asyncio.to_thread(thread.join)

    asyncio.run(main())
    return seen[0], b"".join(seen[1:]), most[0]


def test_bytes_arrive_whole_and_in_order_with_bounded_memory():
    data = os.urandom(1 << 20) * 24  # 24 MiB: three times the pipe's bound
    head, body, most = _feed_and_read(data, [1, 512, 4096, 1 << 20, 100_000])
    assert head == data[:2] and body == data
    assert most < PIPE_BYTES + 262144


def test_an_early_end_of_the_body_reaches_the_reader_and_a_done_reader_drops_the_rest():
    async def main() -> None:
        pipe = BodyPipe(asyncio.get_running_loop())
        failure = []

        def reader() -> None:
            try:
                pipe.read(1000)
            except BodyEnded as error:
                failure.append(str(error))

        thread = threading.Thread(target=reader)
        thread.start()
        await pipe.put(b"x" * 10)
        pipe.close(TimeoutError("stalled"))
        await asyncio.to_thread(thread.join)
        assert failure == ["stalled"]

        done = BodyPipe(asyncio.get_running_loop())
        done.reader_done()
        for _ in range(3):  # would wait for room forever if pieces were still kept
            await asyncio.wait_for(done.put(b"y" * PIPE_BYTES), 5)

    asyncio.run(main())


def test_seeking_backwards_is_refused():
    async def main() -> None:
        pipe = BodyPipe(asyncio.get_running_loop())
        await pipe.put(b"abcdef")
        pipe.close()
        assert pipe.read(3) == b"abc"
        with pytest.raises(OSError):
            pipe.seek(1)
        assert pipe.seek(5) == 5 and pipe.read(10) == b"f" and pipe.read(10) == b""

    asyncio.run(main())
