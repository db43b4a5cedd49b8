"""Sans-IO PCCRR server behaviour (PROTOCOLS.md 2.5, [MS-PCCRR] 3.2.5, Appendix A)."""

from __future__ import annotations

import struct
from collections.abc import Sequence

import pytest

from peerdistd.proto import blockcrypto, pccrr
from peerdistd.proto.pccrr import (
    V1_0,
    V2_0,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    GetBlkList,
    GetBlks,
    GetSegList,
    NegoResp,
    ProtocolVersion,
    SegList,
)
from peerdistd.proto.pccrr_server import ReplyKind, RetrievalResponder, intersect_ranges

SEG = bytes(range(32))
KP = bytes(range(64, 96))
IV = bytes(range(200, 216))


class MemorySource:
    def __init__(self, blocks: dict[bytes, dict[int, bytes]], secrets: dict[bytes, bytes]):
        self.blocks, self.secrets = blocks, secrets

    def segment_secret(self, segment_id: bytes) -> bytes | None:
        return self.secrets.get(segment_id)

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(self.blocks.get(segment_id, {}))

    def read_block(self, segment_id: bytes, index: int) -> bytes | None:
        return self.blocks.get(segment_id, {}).get(index)


def block(i: int, size: int = 65536) -> bytes:
    return bytes([i % 256]) * size


@pytest.fixture
def responder() -> RetrievalResponder:
    held = {i: block(i) for i in (0, 1, 2, 5, 7, 8, 300)}
    held[511] = block(511, 1000)  # a short last block
    return RetrievalResponder(MemorySource({SEG: held}, {SEG: KP}), iv_factory=lambda: IV)


def ask(responder: RetrievalResponder, msg: pccrr.Request, busy: bool = False) -> pccrr.Response:
    reply = responder.respond(pccrr.serialize(msg), busy=busy)
    assert reply.kind is not ReplyKind.DROP
    return pccrr.parse_response(reply.body)


def test_getblks_answers_the_encrypted_block(responder: RetrievalResponder) -> None:
    reply = responder.respond(pccrr.serialize(GetBlks(SEG, (BlockRange(2, 1),))))
    assert reply.kind is ReplyKind.BLOCK and reply.block_bytes == 65536
    msg = pccrr.parse_response(reply.body)
    assert isinstance(msg, Blk)
    assert (msg.segment_id, msg.block_index, msg.next_block_index) == (SEG, 2, 5)
    assert (msg.crypto, msg.iv, msg.vrf, msg.version) == (CryptoAlgo.AES_128, IV, b"", V1_0)
    assert msg.block == blockcrypto.encrypt(1, KP, block(2), IV)[0]
    # The zero-copy frame is byte for byte what the codec writes.
    assert bytes(reply.body) == pccrr.serialize_response(msg)


def test_last_block_has_no_next_and_short_blocks_are_padded(
    responder: RetrievalResponder,
) -> None:
    msg = ask(responder, GetBlks(SEG, (BlockRange(511, 1),)))
    assert isinstance(msg, Blk)
    assert (msg.next_block_index, len(msg.block)) == (0, 1008)
    assert blockcrypto.decrypt(1, KP, msg.iv, msg.block, 1000) == block(511, 1000)


@pytest.mark.parametrize("algo", [CryptoAlgo.AES_192, CryptoAlgo.AES_256])
def test_requested_aes_key_sizes_are_honoured(
    responder: RetrievalResponder, algo: CryptoAlgo
) -> None:
    msg = ask(responder, GetBlks(SEG, (BlockRange(0, 1),), crypto=algo))
    assert isinstance(msg, Blk) and msg.crypto == algo
    assert blockcrypto.decrypt(algo, KP, msg.iv, msg.block, 65536) == block(0)


def test_plaintext_requests_get_aes_unless_allowed(responder: RetrievalResponder) -> None:
    msg = ask(responder, GetBlks(SEG, (BlockRange(1, 1),), crypto=CryptoAlgo.NONE))
    assert isinstance(msg, Blk) and msg.crypto == CryptoAlgo.AES_128
    source = MemorySource({SEG: {1: b"plain"}}, {SEG: KP})
    open_responder = RetrievalResponder(source, allow_plaintext=True)
    msg = ask(open_responder, GetBlks(SEG, (BlockRange(1, 1),), crypto=CryptoAlgo.NONE))
    assert msg == Blk(SEG, 1, 0, b"plain", b"", b"", crypto=CryptoAlgo.NONE)


def test_unknown_algorithm_falls_back_to_aes_128(responder: RetrievalResponder) -> None:
    msg = ask(responder, GetBlks(SEG, (BlockRange(1, 1),), crypto=77))
    assert isinstance(msg, Blk) and msg.crypto == CryptoAlgo.AES_128


def test_multi_block_getblks_gets_the_lowest(responder: RetrievalResponder) -> None:
    request = GetBlks(SEG, (BlockRange(8, 3), BlockRange(5, 2), BlockRange(1, 0)))
    msg = ask(responder, request)
    assert isinstance(msg, Blk) and msg.block_index == 5 and msg.next_block_index == 7


@pytest.mark.parametrize(("segment_id", "index"), [(SEG, 3), (b"\x99" * 32, 0), (SEG, 0xFFFFFFFF)])
def test_unknown_segment_or_block_gets_size_zero(
    responder: RetrievalResponder, segment_id: bytes, index: int
) -> None:
    reply = responder.respond(pccrr.serialize(GetBlks(segment_id, (BlockRange(index, 1),))))
    assert reply.kind is ReplyKind.MISSING and reply.block_bytes == 0
    assert pccrr.parse_response(reply.body) == Blk(segment_id, index)


def test_busy_gets_empty_blk_and_empty_blklist(responder: RetrievalResponder) -> None:
    reply = responder.respond(pccrr.serialize(GetBlks(SEG, (BlockRange(0, 1),))), busy=True)
    assert reply.kind is ReplyKind.BUSY
    assert pccrr.parse_response(reply.body) == Blk(SEG, 0)
    reply = responder.respond(pccrr.serialize(GetBlkList(SEG, (BlockRange(0, 9),))), busy=True)
    assert reply.kind is ReplyKind.BUSY
    assert pccrr.parse_response(reply.body) == BlkList(SEG, (), 0)


def test_blklist_intersects_unnormalised_ranges(responder: RetrievalResponder) -> None:
    request = GetBlkList(SEG, (BlockRange(6, 4), BlockRange(0, 2), BlockRange(1, 3)))
    assert ask(responder, request) == BlkList(
        SEG, (BlockRange(0, 3), BlockRange(7, 2)), next_block_index=300
    )
    assert ask(responder, GetBlkList(SEG, (BlockRange(400, 111),))) == BlkList(SEG, (), 511)
    assert ask(responder, GetBlkList(b"nope", (BlockRange(0, 512),))) == BlkList(b"nope", ())


def test_intersect_ranges_caps_the_list_and_points_past_it() -> None:
    held = list(range(0, 1000, 2))
    ranges, next_index = intersect_ranges([BlockRange(0, 1000)], held)
    assert len(ranges) == 256 and ranges[-1] == BlockRange(510, 1)
    assert next_index == 512
    assert intersect_ranges([BlockRange(0, 0)], [1]) == ((), 1)
    assert intersect_ranges([BlockRange(0xFFFFFFFF, 0xFFFFFFFF)], [1]) == ((), 0)


def test_nego_req_gets_our_range(responder: RetrievalResponder) -> None:
    request = bytes.fromhex("000000010000000000000018000000000000000100000002")
    reply = responder.respond(request)
    assert reply.kind is ReplyKind.NEGOTIATE
    assert pccrr.parse_response(reply.body) == NegoResp(V1_0, V2_0)


def test_unsupported_major_gets_nego_resp_whatever_the_body(
    responder: RetrievalResponder,
) -> None:
    raw = bytearray(pccrr.serialize(GetBlks(SEG, (BlockRange(0, 1),))))
    struct.pack_into(">I", raw, 0, ProtocolVersion(3, 0).to_wire())
    reply = responder.respond(bytes(raw))
    assert reply.kind is ReplyKind.NEGOTIATE
    assert pccrr.parse_response(reply.body) == NegoResp(V1_0, V2_0)
    odd = struct.pack(">IIII", ProtocolVersion(0, 7).to_wire(), 42, 20, 0) + b"junk"
    assert responder.respond(odd).kind is ReplyKind.NEGOTIATE
    # A supported major with a newer minor is served normally.
    msg = ask(responder, GetBlks(SEG, (BlockRange(0, 1),), version=ProtocolVersion(1, 3)))
    assert isinstance(msg, Blk) and msg.block_index == 0


def test_getseglist_lists_indexes_of_held_segments(responder: RetrievalResponder) -> None:
    rid = bytes(range(16))
    request = GetSegList(rid, (b"x" * 32, SEG, SEG, b"y" * 32, SEG))
    assert ask(responder, request) == SegList(rid, (BlockRange(1, 2), BlockRange(4, 1)))


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "shorter than the 16-byte"),
        (b"\x00" * 15, "shorter than the 16-byte"),
        (struct.pack(">IIII", 1, 5, 16, 0), "not a request"),
        (struct.pack(">IIII", 1, 3, 99, 0), "MsgSize 99"),
        (struct.pack(">IIII", 1, 9, 16, 0), "unknown MsgType"),
        (pccrr.serialize(GetSegList(bytes(16), ())), "names no segment"),
        (bytes(pccrr.MAX_REQUEST_SIZE + 1), "request of 98305 bytes"),
    ],
)
def test_garbage_is_dropped_with_a_reason(
    responder: RetrievalResponder, raw: bytes, why: str
) -> None:
    reply = responder.respond(raw)
    assert reply.kind is ReplyKind.DROP and reply.body == b""
    assert why in reply.reason


def test_blocks_too_big_for_a_response_are_not_served() -> None:
    source = MemorySource({SEG: {0: bytes(pccrr.MAX_RESPONSE_SIZE)}}, {SEG: KP})
    reply = RetrievalResponder(source).respond(pccrr.serialize(GetBlks(SEG, (BlockRange(0, 1),))))
    assert reply.kind is ReplyKind.MISSING and "cannot serve" in reply.reason


def test_a_secret_too_short_for_any_key_is_not_served() -> None:
    source = MemorySource({SEG: {0: b"data"}}, {SEG: b"short"})
    reply = RetrievalResponder(source).respond(pccrr.serialize(GetBlks(SEG, (BlockRange(0, 1),))))
    assert reply.kind is ReplyKind.MISSING


def test_the_biggest_servable_block_fills_at_most_a_maximal_response() -> None:
    # 88 bytes of fields around the ciphertext for a 32-byte id and a 16-byte IV (2.2.5.3).
    largest = (pccrr.MAX_RESPONSE_SIZE - 88) // 16 * 16 - 1
    source = MemorySource({SEG: {0: bytes(largest), 1: bytes(largest + 1)}}, {SEG: KP})
    responder = RetrievalResponder(source)
    served = responder.respond(pccrr.serialize(GetBlks(SEG, (BlockRange(0, 1),))))
    assert served.kind is ReplyKind.BLOCK
    assert len(served.body) - 4 <= pccrr.MAX_RESPONSE_SIZE
    assert isinstance(pccrr.parse_response(served.body), Blk)
    refused = responder.respond(pccrr.serialize(GetBlks(SEG, (BlockRange(1, 1),))))
    assert refused.kind is ReplyKind.MISSING


@pytest.mark.parametrize(
    ("ranges", "index"), [((BlockRange(0, 0),), 0), ((BlockRange(7, 0),), 7), ((), 0)]
)
def test_getblks_naming_no_block_gets_size_zero_for_the_index_named(
    responder: RetrievalResponder, ranges: tuple[BlockRange, ...], index: int
) -> None:
    # What Microsoft's conformance suite expects: the "not held" MSG_BLK, not a drop.
    reply = responder.respond(pccrr.serialize(GetBlks(SEG, ranges)))
    assert reply.kind is ReplyKind.MISSING
    assert pccrr.parse_response(reply.body) == Blk(SEG, index)


def test_getblklist_with_no_ranges_gets_an_empty_list(responder: RetrievalResponder) -> None:
    msg = ask(responder, GetBlkList(SEG, ()))
    assert isinstance(msg, BlkList) and msg.segment_id == SEG and msg.ranges == ()


class SealedBlock:
    def __init__(self, crypto: int, iv: bytes, block: bytes) -> None:
        self.crypto, self.iv, self.block = crypto, iv, block


class SealedBlocks:
    def __init__(self, blocks: dict[tuple[bytes, int], SealedBlock]) -> None:
        self.blocks = blocks

    def held_blocks(self, segment_id: bytes) -> Sequence[int]:
        return sorted(i for s, i in self.blocks if s == segment_id)

    def get(self, segment_id: bytes, index: int) -> SealedBlock | None:
        return self.blocks.get((segment_id, index))


def test_sealed_blocks_are_served_as_kept() -> None:
    # A hosted cache's copy of a v2-offered block: served byte for byte, never decrypted.
    other = b"\x77" * 32
    sealed = SealedBlocks(
        {(other, 0): SealedBlock(1, IV, b"c" * 48), (other, 4): SealedBlock(1, IV, b"d" * 16)}
    )
    responder = RetrievalResponder(MemorySource({}, {}), sealed=sealed)
    msg = ask(responder, GetBlks(other, (BlockRange(0, 1),)))
    assert msg == Blk(other, 0, 4, b"c" * 48, b"", IV, crypto=1)
    assert ask(responder, GetBlks(other, (BlockRange(1, 1),))) == Blk(other, 1)
    assert ask(responder, GetBlkList(other, (BlockRange(0, 9),))) == BlkList(
        other, (BlockRange(0, 1), BlockRange(4, 1)), 0
    )
    rid = bytes(16)
    assert ask(responder, GetSegList(rid, (SEG, other))) == SegList(rid, (BlockRange(1, 1),))
