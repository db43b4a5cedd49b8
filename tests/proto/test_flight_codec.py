"""Single-flight claim datagrams (docs/single-flight.md): a recorded vector, every prefix
refused, Hypothesis round-trips, and only DecodeError ever escapes the parser."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto import flight
from peerdistd.proto.flight import Kind, Message, PieceId, PieceState

# HOLD from node 00..0f serving PCCRR at 10.0.0.7:80, ttl 2000 ms, piece (ab*32, block 16)
# with 5 blocks held; laid out field by field as the module docstring says.
VECTOR = bytes.fromhex(
    "50447366"  # magic "PDsf"
    "01"  # version
    "02"  # kind HOLD
    "07d0"  # ttl 2000 ms
    "000102030405060708090a0b0c0d0e0f"  # node id
    "0b" + b"10.0.0.7:80".hex() + "01"  # endpoint, one piece
    "20" + "ab" * 32 + "00000010"  # segment id (32 bytes), first block 16
    "0005"  # held
)
VECTOR_MESSAGE = Message(
    Kind.HOLD,
    bytes(range(16)),
    "10.0.0.7:80",
    2000,
    (PieceState(PieceId(b"\xab" * 32, 16), 5),),
)


def test_vector_parses_and_serializes() -> None:
    assert flight.parse(VECTOR) == VECTOR_MESSAGE
    assert bytes(VECTOR_MESSAGE) == VECTOR


def test_every_prefix_is_refused() -> None:
    """Fed a byte at a time, no prefix of a message is taken for a message."""
    for end in range(len(VECTOR)):
        with pytest.raises(DecodeError):
            flight.parse(VECTOR[:end])


@pytest.mark.parametrize(
    ("mutate", "why"),
    [
        (lambda b: b"PDsX" + b[4:], "not a single-flight"),
        (lambda b: b[:4] + b"\x02" + b[5:], "version"),
        (lambda b: b[:5] + b"\x09" + b[6:], "unknown kind"),
        (lambda b: b + b"\x00", "trailing"),
        (lambda b: b[:24] + b"\x00" + b[25:], "bad endpoint"),
        (lambda b: b[:36] + b"\x00" + b[37:], "piece count"),
        (lambda b: b[:37] + b"\x1f" + b[38:], "segment id|truncated"),
        (lambda b: b + b"\x00" * (flight.MAX_DATAGRAM), "datagram of"),
    ],
)
def test_malformed_fields_are_refused(mutate: object, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        flight.parse(mutate(VECTOR))  # type: ignore[operator]


node_ids = st.binary(min_size=16, max_size=16)
endpoints = st.from_regex(r"[0-9a-f.:\[\]]{1,64}", fullmatch=True)
pieces = st.builds(
    PieceState,
    st.builds(
        PieceId,
        st.sampled_from([32, 48, 64]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
        st.integers(0, 2**32 - 1),
    ),
    st.integers(0, 0xFFFF),
)
messages = st.builds(
    Message,
    st.sampled_from(list(Kind)),
    node_ids,
    endpoints,
    st.integers(0, 0xFFFF),
    st.lists(pieces, min_size=1, max_size=flight.MAX_PIECES).map(tuple),
)


@given(messages)
def test_round_trip(msg: Message) -> None:
    assert flight.parse(bytes(msg)) == msg


@given(st.binary(max_size=2 * flight.MAX_DATAGRAM))
def test_only_decode_error_escapes(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        flight.parse(data)


@given(messages, st.integers(0, 200), st.binary(min_size=1, max_size=4))
def test_damaged_messages_only_raise_decode_error(msg: Message, at: int, junk: bytes) -> None:
    raw = bytearray(bytes(msg))
    pos = at % len(raw)
    raw[pos : pos + len(junk)] = junk
    with contextlib.suppress(DecodeError):
        flight.parse(bytes(raw))
