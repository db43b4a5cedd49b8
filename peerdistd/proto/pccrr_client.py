"""Sans-IO MS-PCCRR client rules: what to send, and whether an answer is the one asked for.

The driver (``net.retrieval_client``) moves the bytes and says whether the answer came marked
busy; every judgement about the answer is made here ([MS-PCCRR] 3.1.5; PROTOCOLS.md 2.5):
same segment id and block index, block-list ranges inside the request, busy vs "not held",
and NEGO_RESP to a request in a version the peer does not speak.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum

from peerdistd.errors import DecodeError, RemoteError
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
    NegoReq,
    NegoResp,
    ProtocolVersion,
)
from peerdistd.proto.pccrr_server import normalise_ranges


class UnexpectedAnswer(RemoteError):
    """A peer's answer that does not parse or does not match the request."""


class Outcome(Enum):
    BLOCK = "block"  # the block came (plaintext in ``BlockAnswer.data``)
    MISSING = "missing"  # SizeOfBlock 0: the peer does not hold it
    BUSY = "busy"  # an empty answer marked busy: the peer is at its upload limit


@dataclass(frozen=True, slots=True)
class BlockAnswer:
    outcome: Outcome
    data: bytes = b""
    crypto: int = CryptoAlgo.NONE


def block_request(segment_id: bytes, index: int, crypto: int = CryptoAlgo.AES_128) -> bytes:
    """MSG_GETBLKS for one block (iPXE and Windows' "simple download", Appendix A <10>)."""
    return pccrr.serialize(GetBlks(segment_id, (BlockRange(index, 1),), crypto=crypto))


def block_run_request(
    segment_id: bytes, index: int, count: int, crypto: int = CryptoAlgo.AES_128
) -> bytes:
    """MSG_GETBLKS for ``count`` blocks from ``index``, for the RUN_PATH extension only (a
    standard server answers such a request with the lowest block alone, 3.2.5.3)."""
    return pccrr.serialize(GetBlks(segment_id, (BlockRange(index, count),), crypto=crypto))


def run_request(blocks: Sequence[tuple[bytes, int]], crypto: int = CryptoAlgo.AES_128) -> bytes:
    """The RUN_PATH body asking for ``blocks`` ((segment id, index) pairs, in order): one
    GETBLKS per stretch of consecutive blocks of one segment, back to back. One stretch is
    exactly :func:`block_run_request`'s message."""
    messages: list[GetBlks] = []
    for segment_id, index in blocks:
        last = messages[-1] if messages else None
        if last is not None and last.segment_id == segment_id and last.ranges[0].end == index:
            grown = BlockRange(last.ranges[0].index, last.ranges[0].count + 1)
            messages[-1] = GetBlks(segment_id, (grown,), crypto=crypto)
        else:
            messages.append(GetBlks(segment_id, (BlockRange(index, 1),), crypto=crypto))
    return pccrr.serialize_run_request(messages)


def split_run(
    body: bytes | bytearray, segment_id: bytes, index: int, count: int, *, busy: bool
) -> list[Blk | Outcome]:
    """The answers in a RUN_PATH body for ``count`` blocks of one segment from ``index``."""
    return split_runs(body, [(segment_id, index + n) for n in range(count)], busy=busy)


def split_runs(
    body: bytes | bytearray, blocks: Sequence[tuple[bytes, int]], *, busy: bool
) -> list[Blk | Outcome]:
    """The answers in a RUN_PATH body, one per block of ``blocks`` in order: each checked as
    :func:`block_cipher` checks one. Fewer than asked (a server with a lower run limit) is
    fine; the caller asks for the rest again. More, or a torn message, is not."""
    view = memoryview(body)
    out: list[Blk | Outcome] = []
    pos = 0
    while pos < len(body):
        if len(out) == len(blocks):
            raise UnexpectedAnswer(f"more than the {len(blocks)} MSG_BLK asked for")
        if len(body) - pos < pccrr.TRANSPORT_HEADER_SIZE:
            raise UnexpectedAnswer("a run answer cut inside a transport header")
        end = pos + pccrr.TRANSPORT_HEADER_SIZE + int.from_bytes(view[pos : pos + 4], "big")
        if end > len(body):
            raise UnexpectedAnswer("a run answer cut inside a message")
        segment_id, index = blocks[len(out)]
        out.append(block_cipher(view[pos:end], segment_id, index, busy=busy))
        pos = end
    if not out:
        raise UnexpectedAnswer("an empty run answer")
    return out


def block_list_request(segment_id: bytes, ranges: Iterable[BlockRange]) -> bytes:
    return pccrr.serialize(GetBlkList(segment_id, tuple(ranges)))


def nego_request() -> bytes:
    return pccrr.serialize(NegoReq(V1_0, V2_0))


def _parse(body: bytes | bytearray | memoryview, asked: str) -> pccrr.Response:
    try:
        answer = pccrr.parse_response(body)
    except DecodeError as exc:
        raise UnexpectedAnswer(f"malformed answer: {exc}") from exc
    if isinstance(answer, NegoResp) and asked != "NEGO_REQ":
        # 3.2.5: a server that does not speak our major version answers NEGO_RESP.
        span = f"{answer.min_version}..{answer.max_version}"
        raise UnexpectedAnswer(f"peer only speaks PCCRR {span}")
    return answer


def block_cipher(
    body: bytes | bytearray | memoryview, segment_id: bytes, index: int, *, busy: bool
) -> Blk | Outcome:
    """The MSG_BLK answering GETBLKS for (segment_id, index) still encrypted, or an outcome.

    The checks iPXE's peerblk.c makes (PROTOCOLS.md 2.5): MSG_BLK, same segment id, same
    block index. An empty block is "missing", or "busy" when the answer was marked busy.
    """
    answer = _parse(body, "GETBLKS")
    if not isinstance(answer, Blk):
        raise UnexpectedAnswer(f"MSG_{answer.MSG_TYPE.name} in answer to GETBLKS")
    if answer.segment_id != segment_id or answer.block_index != index:
        raise UnexpectedAnswer(f"MSG_BLK for another block ({answer.block_index})")
    if not answer.block:
        return Outcome.BUSY if busy else Outcome.MISSING
    return answer


def decrypt_block(
    answer: Blk, secret: bytes, block_length: int, *, either_reading: bool = False
) -> list[bytes]:
    """The plaintexts of ``answer`` cut to ``block_length`` (2.4); the caller hashes them.

    Normally one: the key is the first keylen bytes of Kp. With ``either_reading`` also the
    reading of Microsoft's conformance suite, which encrypts with the whole 32-byte Kp
    (AES-256) whatever CryptoAlgoId says (PROTOCOLS.md 4); a hosted cache accepts what
    verifies under either.
    """
    readings = [answer.crypto]
    short_key = answer.crypto in (CryptoAlgo.AES_128, CryptoAlgo.AES_192)
    if either_reading and short_key and len(secret) >= 32:
        readings.append(CryptoAlgo.AES_256)
    out, why = [], "no key"
    for algo in readings:
        try:
            out.append(blockcrypto.decrypt(algo, secret, answer.iv, answer.block, block_length))
        except DecodeError as exc:
            why = str(exc)
    if not out:
        raise UnexpectedAnswer(f"undecryptable MSG_BLK: {why}")
    return out


def parse_block(
    body: bytes | bytearray | memoryview,
    segment_id: bytes,
    index: int,
    secret: bytes,
    block_length: int,
    *,
    busy: bool,
) -> BlockAnswer:
    """The answer to :func:`block_request`, decrypted with the segment secret."""
    answer = block_cipher(body, segment_id, index, busy=busy)
    if isinstance(answer, Outcome):
        return BlockAnswer(answer)
    (data,) = decrypt_block(answer, secret, block_length)
    return BlockAnswer(Outcome.BLOCK, data, answer.crypto)


def parse_block_list(
    body: bytes | bytearray | memoryview,
    segment_id: bytes,
    wanted: Iterable[BlockRange],
    *,
    busy: bool,
) -> BlkList | Outcome:
    """The answer to :func:`block_list_request`, checked against what was asked (3.1.5.2)."""
    answer = _parse(body, "GETBLKLIST")
    if not isinstance(answer, BlkList):
        raise UnexpectedAnswer(f"MSG_{answer.MSG_TYPE.name} in answer to GETBLKLIST")
    if answer.segment_id != segment_id:
        raise UnexpectedAnswer("MSG_BLKLIST for another segment")
    covered = normalise_ranges(wanted)
    for got in answer.ranges:
        if got.count and not any(w.index <= got.index and got.end <= w.end for w in covered):
            raise UnexpectedAnswer(f"MSG_BLKLIST range {got} was not asked for")
    if busy and not answer.ranges:
        return Outcome.BUSY
    return answer


def parse_nego(body: bytes | bytearray | memoryview) -> tuple[ProtocolVersion, ProtocolVersion]:
    """The (min, max) versions of a NEGO_RESP (2.2.5.1)."""
    answer = _parse(body, "NEGO_REQ")
    if not isinstance(answer, NegoResp):
        raise UnexpectedAnswer(f"MSG_{answer.MSG_TYPE.name} in answer to NEGO_REQ")
    return answer.min_version, answer.max_version
