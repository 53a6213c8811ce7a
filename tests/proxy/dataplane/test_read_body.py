"""The request body as the data plane reads it (forward.read_body): a small one whole, a large
one as a stream that starts once, and that counts as sendable again until it has started."""

from __future__ import annotations

import asyncio

import pytest

from proxy.dataplane.forward import Outcome, StreamedBody, read_body, replayable


class Client:
    """An ASGI receive() over fixed body pieces, counting the calls."""

    def __init__(self, *pieces: bytes) -> None:
        self.pieces = list(pieces)
        self.calls = 0

    async def __call__(self) -> dict[str, object]:
        self.calls += 1
        piece = self.pieces.pop(0)
        return {"type": "http.request", "body": piece, "more_body": bool(self.pieces)}


def read(client: Client, buffer: int, length: int) -> object:
    return asyncio.run(
        read_body(
            client,
            buffer=buffer,
            max_body=1 << 20,
            content_length=length,
            body_idle=5.0,
            outcome=Outcome(),
        )
    )


async def drain(body: StreamedBody) -> bytes:
    return b"".join([piece async for piece in body()])


def test_a_body_within_the_buffer_is_read_whole() -> None:
    body = read(Client(b"ab", b"cd"), buffer=10, length=4)
    assert body == b"abcd"
    assert replayable(body)  # type: ignore[arg-type]


def test_a_larger_body_streams_the_bytes_read_so_far_first() -> None:
    client = Client(b"abc", b"def", b"gh")
    body = read(client, buffer=2, length=8)
    assert isinstance(body, StreamedBody)
    assert client.calls == 1  # read up to the buffer, no further
    assert asyncio.run(drain(body)) == b"abcdefgh"


def test_a_stream_can_be_sent_again_until_its_first_piece_is_taken() -> None:
    client = Client(b"abc", b"def")
    body = read(client, buffer=-1, length=6)  # Expect: nothing read before the upstream's 100
    assert isinstance(body, StreamedBody)
    assert client.calls == 0
    unstarted = body()  # handed to a sender that never took a piece (its connection dropped)
    del unstarted
    assert replayable(body)
    assert asyncio.run(drain(body)) == b"abcdef"  # the next try sends all of it
    assert not replayable(body)
    with pytest.raises(RuntimeError, match="sent once"):
        body()
