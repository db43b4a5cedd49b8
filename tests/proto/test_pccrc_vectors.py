"""The captured IIS 8.5 vectors (tests/vectors): values, keys, byte-identical round trips."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import pytest

from peerdistd.errors import DecodeError
from peerdistd.proto.pccrc import (
    SEGMENT_ID_MAGIC,
    ContentInformation,
    HashAlgorithm,
    parse_partial,
    segment_id,
    segment_secret,
    server_secret_key,
)

VECTORS = Path(__file__).resolve().parent.parent / "vectors"


def _load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text())
    return data


COMMON = _load("common.json")
V1 = _load("pccrc_v1_iis85.json")
V2 = _load("pccrc_v2_iis85.json")
PASSPHRASE = bytes.fromhex(COMMON["server_passphrase_hex"])


def _raw(vector: dict[str, Any]) -> bytes:
    return bytes.fromhex(vector["content_information_hex"])


def test_magic_is_utf16le_with_nul() -> None:
    assert bytes.fromhex(COMMON["segment_id_magic_hex"]) == SEGMENT_ID_MAGIC
    assert len(SEGMENT_ID_MAGIC) == 30


@pytest.mark.parametrize("vector", [V1, V2], ids=["v1", "v2"])
def test_vector_parses_to_listed_values(vector: dict[str, Any]) -> None:
    raw = _raw(vector)
    assert len(raw) == vector["content_information_length"]
    exp = vector["expected"]
    info = ContentInformation.parse(raw)
    assert info.version == int(exp["version"][0])
    assert info.algorithm.value == int(exp["hash_algorithm_id"], 16)
    assert info.algorithm.digest_size == exp["digest_size"]
    assert (info.start, info.end) == (exp["range"]["start"], exp["range"]["end"])
    assert len(info.segments) == len(exp["segments"])
    for seg, want in zip(info.segments, exp["segments"], strict=True):
        assert seg.index == want["index"]
        assert (seg.offset, seg.length, seg.end) == (
            want["offset"],
            want["length"],
            want["range"]["end"],
        )
        assert seg.block_size == want["block_size"]
        assert seg.block_count == want["block_count"]
        assert seg.hod.hex() == want["HoD_hex"]
        assert seg.secret.hex() == want["Kp_segment_secret_hex"]
        assert seg.segment_id.hex() == want["HoHoDk_segment_id_hex"]
        assert seg.segment_id.hex().upper() == want["HoHoDk_pccrd_scope_string"]
        assert [h.hex() for h in seg.block_hashes] == [b["hash_hex"] for b in want["blocks"]]
    blocks = list(info.blocks())
    want_blocks = [(s["index"], b) for s in exp["segments"] for b in s["blocks"]]
    assert [(r.segment.index, r.index, r.start, r.end, r.hash.hex()) for r in blocks] == [
        (si, b["index"], b["range"]["start"], b["range"]["end"], b["hash_hex"])
        for si, b in want_blocks
    ]


@pytest.mark.parametrize("vector", [V1, V2], ids=["v1", "v2"])
def test_vector_serializes_back_byte_identical(vector: dict[str, Any]) -> None:
    raw = _raw(vector)
    info = ContentInformation.parse(raw)
    assert info.to_bytes() == raw
    assert bytes(info) == raw
    assert ContentInformation.parse(memoryview(raw)) == info
    assert ContentInformation.parse(bytearray(raw)) == info


def test_v1_layout_offsets_match_the_decoded_fields() -> None:
    raw = _raw(V1)
    lay = V1["layout_offsets"]
    info = ContentInformation.parse(raw)
    seg = info.segments[0]
    at, size = lay["segment0.SegmentHashOfData"]
    assert raw[at : at + size] == seg.hod
    at, size = lay["segment0.SegmentSecret"]
    assert raw[at : at + size] == seg.secret
    at, size = lay["blocks0.BlockHashes[1]"]
    assert raw[at : at + size] == seg.block_hashes[1]


@pytest.mark.parametrize(("vector", "version"), [(V1, 1), (V2, 2)], ids=["v1", "v2"])
def test_passphrase_reproduces_ks_kp_and_segment_ids(vector: dict[str, Any], version: int) -> None:
    exp = vector["expected"]
    ks = server_secret_key(PASSPHRASE, version)
    assert ks.hex() == exp["server_secret_Ks_hex"]
    info = ContentInformation.parse(_raw(vector))
    for seg in info.segments:
        kp = segment_secret(info.algorithm, ks, seg.hod)
        assert kp == seg.secret
        assert segment_id(info.algorithm, kp, seg.hod) == seg.segment_id


def test_v1_hod_is_the_hash_of_the_block_hashes() -> None:
    seg = ContentInformation.parse(_raw(V1)).segments[0]
    assert hashlib.sha256(b"".join(seg.block_hashes)).digest() == seg.hod


def test_v2_uses_truncated_sha512_not_sha512_256() -> None:
    ks = server_secret_key(PASSPHRASE, 2)
    assert ks == hashlib.sha512(PASSPHRASE).digest()[:32]
    assert ks != hashlib.new("sha512_256", PASSPHRASE).digest()
    seg = ContentInformation.parse(_raw(V2)).segments[0]
    full = hmac.digest(ks, seg.hod, "sha512")
    assert HashAlgorithm.TRUNCATED_SHA512.hmac(ks, seg.hod) == full[:32] == seg.secret


def test_ascii_magic_would_give_a_different_id() -> None:
    seg = ContentInformation.parse(_raw(V1)).segments[0]
    ascii_id = hmac.digest(seg.secret, seg.hod + b"MS_P2P_CACHING\0", "sha256")
    assert ascii_id != seg.segment_id


def test_v1_truncated_at_every_byte_raises_decode_error_with_offset() -> None:
    raw = _raw(V1)
    for n in range(len(raw)):
        with pytest.raises(DecodeError) as err:
            ContentInformation.parse(raw[:n])
        assert err.value.offset is not None and 0 <= err.value.offset <= n


def test_v2_truncated_at_every_byte_raises_decode_error_with_offset() -> None:
    # V2 has no segment count: the chunks run to the end of the buffer. A cut exactly after
    # the header is our empty-content form, so that one prefix parses (to no segments).
    raw = _raw(V2)
    for n in range(len(raw)):
        if n == 31:
            assert ContentInformation.parse(raw[:n]).segments == ()
            continue
        with pytest.raises(DecodeError) as err:
            ContentInformation.parse(raw[:n])
        assert err.value.offset is not None and 0 <= err.value.offset <= n


@pytest.mark.parametrize("vector", [V1, V2], ids=["v1", "v2"])
def test_trailing_bytes_are_refused(vector: dict[str, Any]) -> None:
    raw = _raw(vector)
    with pytest.raises(DecodeError) as err:
        ContentInformation.parse(raw + b"\0")
    assert err.value.offset == len(raw) if vector is V1 else err.value.offset is not None


def _patched(raw: bytes, at: int, new: bytes) -> bytes:
    return raw[:at] + new + raw[at + len(new) :]


@pytest.mark.parametrize(
    ("at", "new", "offset"),
    [
        (0, b"\x00\x03", 0),  # unknown version
        (0, b"\x01\x01", 0),
        (2, b"\x04\x80\x00\x00", 2),  # unknown dwHashAlgo
        (2, b"\x04\x00\x00\x00", 2),  # the V2 algorithm id inside V1
        (6, (99710).to_bytes(4, "little"), 6),  # offset past the first segment
        (10, (99711).to_bytes(4, "little"), 10),  # range past the segment
        (14, (2).to_bytes(4, "little"), 98),  # cSegments overruns
        (14, (0xFFFFFFFF).to_bytes(4, "little"), 98),
        (26, (0).to_bytes(4, "little"), 26),  # cbSegment 0
        (26, (32 * 1024 * 1024 + 1).to_bytes(4, "little"), 26),
        (30, (4096).to_bytes(4, "little"), 30),  # cbBlockSize not 64 KiB
        (18, (5).to_bytes(8, "little"), 18),  # segment off the 32 MiB grid
        (98, (3).to_bytes(4, "little"), 98),  # cBlocks more than the segment has
        (98, (1).to_bytes(4, "little"), 98),  # cBlocks fewer than the range needs
        (98, (0xFFFFFFFF).to_bytes(4, "little"), 98),
    ],
)
def test_v1_malformations(at: int, new: bytes, offset: int) -> None:
    with pytest.raises(DecodeError) as err:
        ContentInformation.parse(_patched(_raw(V1), at, new))
    assert err.value.offset == offset


@pytest.mark.parametrize(
    ("at", "new", "offset"),
    [
        (0, b"\x01\x02", 0),  # unknown minor version
        (2, b"\x01", 2),  # bHashAlgo 0x01 (spec example 3.7's mistake, pitfall 4)
        (19, (39390).to_bytes(4, "big"), 19),  # offset past the first segment
        (23, (99711).to_bytes(8, "big"), 172),  # range longer than the segments
        (23, (39390).to_bytes(8, "big"), 104),  # a segment lies past the range
        (31, b"\x01", 31),  # unknown chunk type
        (32, (137).to_bytes(4, "big"), 32),  # chunk length not a multiple of 68
        (32, (0).to_bytes(4, "big"), 32),
        (32, (204).to_bytes(4, "big"), 172),  # chunk overruns the buffer
        (36, (0).to_bytes(4, "big"), 36),  # cbSegment 0
        (36, (128 * 1024 + 1).to_bytes(4, "big"), 36),  # segment over 128 KiB
    ],
)
def test_v2_malformations(at: int, new: bytes, offset: int) -> None:
    with pytest.raises(DecodeError) as err:
        ContentInformation.parse(_patched(_raw(V2), at, new))
    assert err.value.offset == offset


def test_unknown_major_version_and_tiny_inputs() -> None:
    for data in (b"", b"\x00", b"\x00\x00", b"\x00\x03" + bytes(40), b"\x02\x00"):
        with pytest.raises(DecodeError):
            ContentInformation.parse(data)


@pytest.mark.parametrize("vector", [V1, V2], ids=["v1", "v2"])
def test_parse_partial_grows_segment_by_segment(vector: dict[str, Any]) -> None:
    raw = _raw(vector)
    full = ContentInformation.parse(raw)
    seen = 0
    for n in range(len(raw) + 1):
        part = parse_partial(raw[:n])
        assert len(part.segments) >= seen  # never shrinks
        seen = len(part.segments)
        assert part.segments == full.segments[:seen]
        if n >= 2:
            assert part.version == full.version
        if part.complete:
            assert part.content_information is not None
            assert part.content_information.to_bytes() == raw[:n]
    assert seen == len(full.segments)
    final = parse_partial(raw)
    assert final.complete and final.content_information == full
    assert (final.start, final.end, final.algorithm) == (full.start, full.end, full.algorithm)


def test_parse_partial_v1_is_complete_only_at_the_end() -> None:
    raw = _raw(V1)
    assert [n for n in range(len(raw) + 1) if parse_partial(raw[:n]).complete] == [len(raw)]
    header_only = parse_partial(raw[:50])  # header known, the segment description not yet
    assert (header_only.algorithm, header_only.start) == (HashAlgorithm.SHA256, None)
    described = parse_partial(raw[:100])  # descriptions known, block hashes not yet
    assert (described.start, described.end, described.segments) == (0, 99710, ())


def test_parse_partial_v2_complete_at_chunk_boundaries() -> None:
    raw = _raw(V2)
    assert [n for n in range(len(raw) + 1) if parse_partial(raw[:n]).complete] == [31, len(raw)]
    assert len(parse_partial(raw[:104]).segments) == 1  # inside the chunk, segment 0 is whole


def test_parse_partial_still_refuses_malformed_bytes() -> None:
    with pytest.raises(DecodeError):
        parse_partial(b"\x00\x09")
    with pytest.raises(DecodeError):
        parse_partial(_patched(_raw(V2), 31, b"\x07")[:40])
