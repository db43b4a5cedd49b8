"""Hypothesis: PCCRR messages round-trip, only DecodeError escapes, the server never raises."""

from __future__ import annotations

import contextlib
import struct
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto import pccrr
from peerdistd.proto.pccrr import (
    Blk,
    BlkList,
    BlockRange,
    ExtensibleBlob,
    GetBlkList,
    GetBlks,
    GetSegList,
    NegoReq,
    NegoResp,
    ProtocolVersion,
    SegList,
    SegmentAge,
)
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder

u32 = st.integers(0, 2**32 - 1)
versions = st.builds(ProtocolVersion, st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
ids = st.binary(max_size=40)
small = st.binary(max_size=40)
ranges = st.builds(BlockRange, u32, u32)
some_ranges = st.lists(ranges, min_size=1, max_size=12).map(tuple)
any_ranges = st.lists(ranges, max_size=12).map(tuple)
request_ids = st.binary(min_size=16, max_size=16)
common = {"crypto": u32, "version": versions}

requests: st.SearchStrategy[pccrr.Request] = st.one_of(
    st.builds(NegoReq, versions, versions, **common),
    st.builds(GetBlkList, ids, some_ranges, **common),
    st.builds(GetBlks, ids, some_ranges, small, **common),
    st.builds(GetSegList, request_ids, st.lists(ids, max_size=8).map(tuple), small, **common),
)
responses: st.SearchStrategy[pccrr.Response] = st.one_of(
    st.builds(NegoResp, versions, versions, **common),
    st.builds(BlkList, ids, any_ranges, u32, **common),
    st.builds(Blk, ids, u32, u32, st.binary(max_size=300), small, small, **common),
    st.builds(SegList, request_ids, any_ranges, small, **common),
)


@given(requests)
def test_requests_round_trip(msg: pccrr.Request) -> None:
    raw = pccrr.serialize(msg)
    assert len(raw) % 4 == 0
    assert pccrr.parse_request(raw) == msg


@given(responses)
def test_responses_round_trip(msg: pccrr.Response) -> None:
    assert pccrr.parse_response(pccrr.serialize_response(msg)) == msg


@given(
    st.sampled_from([1, 2, 3, 4]),
    st.lists(st.builds(SegmentAge, st.integers(0, 255), st.integers(0, 2**24 - 1)), max_size=20),
)
def test_extensible_blob_round_trips(units: int, ages: list[SegmentAge]) -> None:
    blob = ExtensibleBlob(units, tuple(ages))
    assert pccrr.parse_extensible_blob(pccrr.serialize_extensible_blob(blob)) == blob


def _only_decode_errors(data: bytes) -> None:
    for parse in (pccrr.parse_request, pccrr.parse_response, pccrr.parse_extensible_blob):
        with contextlib.suppress(DecodeError):
            parse(data)


@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    _only_decode_errors(data)
    _only_decode_errors(struct.pack(">I", len(data)) + data)


def _mutate(raw: bytes, data: st.DataObject) -> bytes:
    out = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        if not out:
            break
        at = data.draw(st.integers(0, len(out) - 1))
        if data.draw(st.booleans()) and at + 4 <= len(out):
            struct.pack_into(
                ">I", out, at, data.draw(st.sampled_from([0, 1, 3, 16, 255, 2**31, 2**32 - 1]))
            )
        else:
            out[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(out)))
    return bytes(out[:cut]) if data.draw(st.booleans()) else bytes(out)


@settings(max_examples=300)
@given(st.one_of(requests, responses), st.data())
def test_mutated_messages_only_raise_decode_error(msg: pccrr.Message, data: st.DataObject) -> None:
    raw = pccrr.serialize(msg)
    mutated = _mutate(raw, data)
    _only_decode_errors(mutated)
    _only_decode_errors(struct.pack(">I", len(mutated)) + mutated)


class Source:
    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return bytes(32) if segment_id[:1] in (b"", b"\x00", b"\x01") else None

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return [0, 1, 2, 9, 511] if segment_id[:1] != b"\x01" else []

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return bytes(index % 700 + 1) if index in (0, 1, 2, 9, 511) else None


RESPONDERS = [RetrievalResponder(Source()), RetrievalResponder(Source(), allow_plaintext=True)]


def _check_reply(raw: bytes, busy: bool) -> None:
    for responder in RESPONDERS:
        reply = responder.respond(raw, busy=busy)
        if reply.kind is ReplyKind.DROP:
            assert reply.body == b"" and reply.reason
        else:
            answer = pccrr.parse_response(reply.body)
            assert (reply.kind is ReplyKind.BLOCK) == (
                isinstance(answer, Blk) and answer.block != b""
            )


@settings(max_examples=300)
@given(requests, st.data(), st.booleans())
def test_server_answers_or_drops_any_request(
    msg: pccrr.Request, data: st.DataObject, busy: bool
) -> None:
    raw = pccrr.serialize(msg)
    _check_reply(raw, busy)
    _check_reply(_mutate(raw, data), busy)


@given(st.binary(max_size=300), st.booleans())
def test_server_never_raises_on_random_bytes(raw: bytes, busy: bool) -> None:
    _check_reply(raw, busy)
