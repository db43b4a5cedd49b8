"""The window of upload slots a serving peer grants us (net/peer_windows.py): shut by busy
answers, opened again only by an answer that is not busy, probed only while someone waits."""

from __future__ import annotations

import asyncio

import pytest

from peerdistd.net.peer_windows import Outcome, PeerWindows

PEER = "127.0.0.1:8080"
SEG = b"s" * 32


class Probes:
    """A scripted peer answering probes with the outcomes given, in order."""

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)
        self.asked: list[tuple[str, bytes]] = []

    async def __call__(self, peer: str, segment_id: bytes) -> Outcome:
        self.asked.append((peer, segment_id))
        return self.outcomes.pop(0)


async def test_a_busy_answer_shuts_the_window_until_one_of_ours_ends() -> None:
    probes = Probes()
    windows = PeerWindows(8, probes)
    windows.begin(PEER, SEG)
    windows.begin(PEER, SEG)
    windows.end(PEER, "busy")  # it serves the other one: it grants us one slot
    assert not windows.free(PEER) and windows.at_limit() == 1
    waiting = asyncio.ensure_future(windows.wait([PEER], timeout=30))
    await asyncio.sleep(0)
    assert not waiting.done()
    windows.end(PEER, "answered")  # that slot is free again, and one more
    await waiting
    assert windows.free(PEER) and probes.asked == []
    await windows.aclose()


async def test_a_shut_window_opens_only_when_a_probe_is_answered() -> None:
    probes = Probes("busy", "busy", "answered")
    windows = PeerWindows(8, probes)
    windows.begin(PEER, SEG)
    windows.end(PEER, "busy")  # nothing of ours there: only a probe can tell
    assert not windows.free(PEER)
    await windows.wait([PEER], timeout=30)  # back-offs of 50, 100 and 200 ms
    assert probes.asked == [(PEER, SEG)] * 3
    assert windows.free(PEER)
    windows.begin(PEER, SEG)
    assert not windows.free(PEER)  # the probe opened the window to one slot
    windows.end(PEER, "answered")
    await windows.aclose()


async def test_waiting_for_a_busy_peer_times_out() -> None:
    windows = PeerWindows(8, Probes(*("busy",) * 10))
    windows.begin(PEER, SEG)
    windows.end(PEER, "busy")
    with pytest.raises(TimeoutError):
        await windows.wait([PEER], timeout=0.01)
    assert not windows.free(PEER)
    await windows.aclose()


async def test_another_free_peer_ends_the_wait_at_once() -> None:
    windows = PeerWindows(8, Probes())
    windows.begin(PEER, SEG)
    windows.end(PEER, "busy")
    await windows.wait([PEER, "127.0.0.3:8080"], timeout=30)
    await windows.aclose()
