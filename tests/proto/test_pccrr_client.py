"""Sans-IO PCCRR client rules ([MS-PCCRR] 3.1.5; PROTOCOLS.md 2.5): the answer must be the one
asked for; busy and "not held" are told apart; NEGO_RESP means another major version."""

from __future__ import annotations

import pytest

from peerdistd.proto import blockcrypto, pccrr, pccrr_client
from peerdistd.proto.pccrr import (
    V1_0,
    V2_0,
    Blk,
    BlkList,
    BlockRange,
    CryptoAlgo,
    GetBlkList,
    GetBlks,
    NegoReq,
    NegoResp,
    ProtocolVersion,
)
from peerdistd.proto.pccrr_client import BlockAnswer, Outcome, UnexpectedAnswer

SEG = bytes(range(32))
KP = bytes(range(64, 96))
IV = bytes(16)
BLOCK = b"b" * 1000


def blk(index: int = 3, key: bytes = KP, algo: int = CryptoAlgo.AES_128, seg: bytes = SEG) -> bytes:
    size = blockcrypto.ciphertext_size(algo, len(BLOCK))
    out = bytearray(size)
    blockcrypto.encrypt_into(algo, key, IV, BLOCK, memoryview(out))
    return pccrr.serialize_response(Blk(seg, index, 0, bytes(out), b"", IV, crypto=algo))


def test_requests_are_what_ipxe_and_windows_send() -> None:
    assert pccrr.parse_request(pccrr_client.block_request(SEG, 3)) == GetBlks(
        SEG, (BlockRange(3, 1),), crypto=CryptoAlgo.AES_128
    )
    ranges = (BlockRange(0, 4), BlockRange(9, 2))
    assert pccrr.parse_request(pccrr_client.block_list_request(SEG, ranges)) == GetBlkList(
        SEG, ranges
    )
    assert pccrr.parse_request(pccrr_client.nego_request()) == NegoReq(V1_0, V2_0)


def test_the_block_asked_for_is_decrypted() -> None:
    got = pccrr_client.parse_block(blk(), SEG, 3, KP, len(BLOCK), busy=False)
    assert got == BlockAnswer(Outcome.BLOCK, BLOCK, CryptoAlgo.AES_128)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (blk(index=4), "another block"),
        (blk(seg=b"\x01" * 32), "another block"),
        (pccrr.serialize_response(BlkList(SEG, ())), "MSG_BLKLIST in answer to GETBLKS"),
        (pccrr.serialize_response(NegoResp(ProtocolVersion(3), ProtocolVersion(4))), "3.0..4.0"),
        (b"\x00\x00\x00\x10" + bytes(16), "malformed"),
    ],
)
def test_an_answer_to_another_question_is_refused(body: bytes, why: str) -> None:
    with pytest.raises(UnexpectedAnswer, match=why):
        pccrr_client.parse_block(body, SEG, 3, KP, len(BLOCK), busy=False)


def test_empty_block_is_missing_or_busy() -> None:
    empty = pccrr.serialize_response(Blk(SEG, 3))
    assert pccrr_client.parse_block(empty, SEG, 3, KP, 10, busy=False).outcome is Outcome.MISSING
    assert pccrr_client.parse_block(empty, SEG, 3, KP, 10, busy=True).outcome is Outcome.BUSY


def test_either_key_reading_can_be_tried() -> None:
    # The conformance suite encrypts with the whole 32-byte Kp while saying AES-128 (PROTOCOLS 4).
    raw = bytearray(blk(key=KP, algo=CryptoAlgo.AES_256))
    raw[4 + 12 : 4 + 16] = CryptoAlgo.AES_128.to_bytes(4, "big")  # labelled AES_128
    answer = pccrr_client.block_cipher(bytes(raw), SEG, 3, busy=False)
    assert isinstance(answer, Blk) and answer.crypto == CryptoAlgo.AES_128
    (spec,) = pccrr_client.decrypt_block(answer, KP, len(BLOCK))
    assert spec != BLOCK  # Kp[:16], the spec's (and iPXE's) reading, does not open it
    assert pccrr_client.decrypt_block(answer, KP, len(BLOCK), either_reading=True)[1] == BLOCK
    # And what real clients send opens under the spec's reading, first in the list.
    spec_style = pccrr_client.block_cipher(blk(), SEG, 3, busy=False)
    assert isinstance(spec_style, Blk)
    assert pccrr_client.decrypt_block(spec_style, KP, len(BLOCK), either_reading=True)[0] == BLOCK


def test_block_list_ranges_must_lie_inside_the_request() -> None:
    wanted = (BlockRange(0, 4), BlockRange(8, 4))
    ok = pccrr.serialize_response(BlkList(SEG, (BlockRange(1, 2), BlockRange(8, 4)), 20))
    got = pccrr_client.parse_block_list(ok, SEG, wanted, busy=False)
    assert isinstance(got, BlkList) and got.next_block_index == 20
    outside = pccrr.serialize_response(BlkList(SEG, (BlockRange(3, 2),)))
    with pytest.raises(UnexpectedAnswer, match="not asked for"):
        pccrr_client.parse_block_list(outside, SEG, wanted, busy=False)
    other = pccrr.serialize_response(BlkList(b"\x02" * 32, ()))
    with pytest.raises(UnexpectedAnswer, match="another segment"):
        pccrr_client.parse_block_list(other, SEG, wanted, busy=False)
    empty = pccrr.serialize_response(BlkList(SEG, ()))
    assert pccrr_client.parse_block_list(empty, SEG, wanted, busy=True) is Outcome.BUSY
    assert pccrr_client.parse_block_list(empty, SEG, wanted, busy=False) == BlkList(SEG, ())


def test_nego() -> None:
    body = pccrr.serialize_response(NegoResp(V1_0, V2_0))
    assert pccrr_client.parse_nego(body) == (V1_0, V2_0)
    with pytest.raises(UnexpectedAnswer, match="in answer to NEGO_REQ"):
        pccrr_client.parse_nego(pccrr.serialize_response(BlkList(SEG, ())))
