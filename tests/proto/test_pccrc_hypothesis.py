"""Hypothesis: parse/serialize round trips, ranges, and the fuzz invariant (only DecodeError)."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc import (
    V1_BLOCK_SIZE,
    V1_SEGMENT_SIZE,
    V2_MAX_SEGMENT_SIZE,
    ContentInformation,
    HashAlgorithm,
    Segment,
    build_v1,
    build_v2,
    parse_partial,
    segment_v1,
    segment_v2_from_hod,
    server_secret_key,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
RAW = [
    bytes.fromhex(json.loads((VECTORS / name).read_text())["content_information_hex"])
    for name in ("pccrc_v1_iis85.json", "pccrc_v2_iis85.json")
]
KS = server_secret_key(b"hypothesis", 1)
V1_ALGORITHMS = [HashAlgorithm.SHA256, HashAlgorithm.SHA384, HashAlgorithm.SHA512]
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def v1_segments(size: int, algorithm: HashAlgorithm) -> list[Segment]:
    out = []
    for index, offset in enumerate(range(0, size, V1_SEGMENT_SIZE)):
        length = min(V1_SEGMENT_SIZE, size - offset)
        hashes = [
            algorithm.digest(b"%d.%d" % (index, i)) for i in range(-(-length // V1_BLOCK_SIZE))
        ]
        out.append(segment_v1(algorithm, index, offset, length, hashes, KS))
    return out


def v2_segments(lengths: list[int]) -> list[Segment]:
    out, offset = [], 0
    for index, length in enumerate(lengths):
        hod = hashlib.sha512(b"%d" % index).digest()[:32]
        out.append(segment_v2_from_hod(index, offset, length, hod, KS))
        offset += length
    return out


@st.composite
def v1_infos(draw: st.DrawFn) -> ContentInformation:
    algorithm = draw(st.sampled_from(V1_ALGORITHMS))
    size = draw(st.integers(1, 3 * V1_SEGMENT_SIZE + V1_BLOCK_SIZE + 1))
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start + 1, size))
    return build_v1(algorithm, v1_segments(size, algorithm), start, end)


@st.composite
def v2_infos(draw: st.DrawFn) -> ContentInformation:
    lengths = draw(st.lists(st.integers(1, V2_MAX_SEGMENT_SIZE), min_size=1, max_size=12))
    size = sum(lengths)
    start = draw(st.integers(0, size - 1))
    end = draw(st.integers(start + 1, size))
    return build_v2(v2_segments(lengths), start, end)


infos = st.one_of(v1_infos(), v2_infos())


@FAST
@given(infos)
def test_serialize_parse_round_trip(info: ContentInformation) -> None:
    raw = info.to_bytes()
    parsed = ContentInformation.parse(raw)
    assert parsed == info
    assert parsed.to_bytes() == raw


@FAST
@given(infos, st.data())
def test_sub_range_rules_hold(info: ContentInformation, data: st.DataObject) -> None:
    offset = data.draw(st.integers(info.start, info.end - 1))
    length = data.draw(st.integers(1, info.end - offset))
    sub = info.sub_range(offset, length)
    assert (sub.start, sub.end) == (offset, offset + length)
    assert ContentInformation.parse(sub.to_bytes()) == sub
    # Only segments that meet the range; ids unchanged; blocks are exactly those meeting it.
    ids = {s.segment_id for s in info.segments}
    assert all(
        s.segment_id in ids and s.offset < sub.end and s.end > sub.start for s in sub.segments
    )
    refs = list(sub.blocks())
    assert (
        refs[0].start <= offset < refs[0].end and refs[-1].start < offset + length <= refs[-1].end
    )
    assert all(a.end == b.start for a, b in itertools.pairwise(refs))
    whole = {(r.segment.segment_id, r.index): r.hash for r in info.blocks()}
    assert all(whole[(r.segment.segment_id, r.index)] == r.hash for r in refs)
    probe = data.draw(st.integers(offset, offset + length - 1))
    hit = sub.block_at(probe)
    assert hit is not None and hit.start <= probe < hit.end


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_raise_decode_error(data: bytes) -> None:
    for prefix in (b"", b"\x00\x01", b"\x00\x02"):
        _parse_or_decode_error(prefix + data)


@st.composite
def mutated_vectors(draw: st.DrawFn) -> bytes:
    raw = bytearray(draw(st.sampled_from(RAW)))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(raw) - 1))
        kind = draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        if kind == "set":
            raw[at] = draw(st.integers(0, 255))
        elif kind == "insert":
            raw[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del raw[at : at + draw(st.integers(1, 8))]
        else:
            del raw[at:]
        if not raw:
            break
    return bytes(raw)


@settings(max_examples=400, deadline=None)
@given(mutated_vectors())
def test_mutated_vectors_only_ever_raise_decode_error(data: bytes) -> None:
    _parse_or_decode_error(data)


def _parse_or_decode_error(data: bytes) -> None:
    try:
        info = ContentInformation.parse(data)
    except DecodeError as exc:
        assert exc.offset is not None and 0 <= exc.offset <= len(data)
    else:
        # Whatever is accepted describes a sane range and serializes back byte for byte.
        assert info.to_bytes() == data
        assert info.start <= info.end
        assert all(r.start < r.end for r in info.blocks())
    try:
        part = parse_partial(data)
    except DecodeError:
        return
    assert all(isinstance(s, Segment) for s in part.segments)
