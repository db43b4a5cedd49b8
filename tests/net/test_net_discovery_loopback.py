"""Discovery on real sockets: daemons on 127.0.0.x sharing one port, in a private netns."""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

from peerdistd.errors import ConfigError
from peerdistd.net.discovery import Discovery, DiscoveryEvent, PeerHit
from peerdistd.proto.pccrd import GROUP_V4, MAX_MESSAGE_SIZE, Probe, ProbeMatch, parse_probe_match


def _load_netns() -> Any:
    path = Path(__file__).with_name("test_net_discovery_netns.py")
    spec = importlib.util.spec_from_file_location("_peerdist_netns", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netns = _load_netns()
S1, S2, S3, S4 = (bytes([n]) * 32 for n in (0x11, 0x22, 0x33, 0x44))
WINDOW = 0.15


class Directory:
    def __init__(self, held: dict[bytes, int]) -> None:
        self.held = held
        self.asked: list[tuple[bytes, ...]] = []

    def block_counts(self, segment_ids: Sequence[bytes]) -> dict[bytes, int]:
        self.asked.append(tuple(segment_ids))
        return {s: self.held[s] for s in segment_ids if s in self.held}


class Events:
    """on_event sink that a test can wait on."""

    def __init__(self) -> None:
        self.items: list[DiscoveryEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: DiscoveryEvent) -> None:
        self.items.append(event)
        self._changed.set()

    def count(self, kind: str, detail: str | None = None) -> int:
        return sum(e.kind == kind and detail in (None, e.detail) for e in self.items)

    async def wait(self, done: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                self._changed.clear()
                await self._changed.wait()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def node(address: str, held: dict[bytes, int], port: int, **kw: Any) -> Discovery:
    return Discovery(
        Directory(held), interface_addresses=[address], advertise=f"{address}:80", port=port, **kw
    )


def raw_socket(address: str) -> socket.socket:
    """A plain client (like iPXE): sends from an ephemeral port, reads unicast answers."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(address))
    sock.setblocking(False)
    return sock


def run(make: Callable[[], Coroutine[Any, Any, None]], **kw: Any) -> None:
    netns.run_isolated(make, **kw)


def by_xaddr(hits: list[PeerHit]) -> dict[str, int]:
    assert len({h.xaddr for h in hits}) == len(hits)
    return {h.xaddr: h.block_count for h in hits}


def test_three_daemons_find_exactly_the_others_that_hold_each_id() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        a = node("127.0.0.1", {S1: 5, S2: 3}, port)
        b = node("127.0.0.2", {S2: 7, S3: 1}, port)
        c = node("127.0.0.3", {S1: 2}, port)
        async with a, b, c:
            from_c = await c.find([S1, S2, S3, S4], window=WINDOW)
            assert {sid: by_xaddr(h) for sid, h in from_c.items()} == {
                S1: {"127.0.0.1:80": 5},  # not c itself, though it holds S1
                S2: {"127.0.0.1:80": 3, "127.0.0.2:80": 7},
                S3: {"127.0.0.2:80": 1},
                S4: {},
            }
            from_a = await a.find([S1, S3], window=WINDOW, version=2)
            assert {sid: by_xaddr(h) for sid, h in from_a.items()} == {
                S1: {"127.0.0.3:80": 1},  # V2 answers say "has it", not how many blocks
                S3: {"127.0.0.2:80": 1},
            }
            assert c.stats.probes_sent == 1  # four ids fit one probe
            assert c.stats.matches_received == 2
            assert a.stats.matches_sent == 1 and b.stats.matches_sent == 2
            assert c.stats.matches_sent == 1  # to a's V2 probe
            assert b.stats.probes_received == 2
            assert sum(c.stats.dropped.values()) == 0

    run(scenario)


def test_ipxe_style_probe_gets_a_unicast_answer_from_the_listening_port_owner() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        events = Events()
        async with node("127.0.0.2", {S2: 9}, port, on_event=events) as b:
            client = raw_socket("127.0.0.5")
            loop = asyncio.get_running_loop()
            probe = Probe("urn:uuid:00000000-0000-0000-0000-0000000000aa", (S2,))
            client.sendto(probe.to_bytes(), (GROUP_V4, port))
            async with asyncio.timeout(5):
                data, source = await loop.sock_recvfrom(client, 65536)
            client.close()
            match = parse_probe_match(data)
            assert match.relates_to == probe.message_id
            assert match.counts == {S2: 9}
            assert match.xaddrs == ("127.0.0.2:80",)
            assert source == b.unicast_addresses[0]  # from b's own address
            assert events.count("probe_answered") == 1

    run(scenario)


def test_garbage_flood_leaves_it_answering() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        events = Events()
        a = node("127.0.0.1", {S1: 4}, port, on_event=events)
        b = node("127.0.0.2", {}, port)
        async with a, b:
            good = Probe("urn:uuid:flood", (S1,)).to_bytes()
            junk = [
                b"",
                b"\x00" * 100,
                good[:200],
                good.replace(b"Scopes", b"Scope"),
                good.replace(b"<?xml", b'<!DOCTYPE x [<!ENTITY a "b">]><?xml'),
                b"<" * 5000,
                b"A" * (MAX_MESSAGE_SIZE + 1),
            ]
            sender = raw_socket("127.0.0.7")
            for round_ in range(1, 101):  # paced so that no kernel buffer overflows
                for datagram in junk:
                    sender.sendto(datagram, (GROUP_V4, port))

                def done(n: int = round_) -> bool:
                    return events.count("dropped") == n * len(junk)

                await events.wait(done)
            assert a.stats.dropped == {"malformed": 600, "oversized": 100}
            # stale or broken answers straight to a's unicast socket
            stale = ProbeMatch("urn:uuid:m", "urn:uuid:nobody-asked", ("127.0.0.7:1",), ((S1, 1),))
            sender.sendto(stale.to_bytes(), a.unicast_addresses[0])
            sender.sendto(b"\xff\xfe junk", a.unicast_addresses[0])
            sender.close()
            await events.wait(lambda: events.count("dropped") == 702)
            assert a.stats.dropped["unsolicited"] == 1 and a.stats.dropped["malformed"] == 601
            found = await b.find([S1], window=WINDOW)
            assert by_xaddr(found[S1]) == {"127.0.0.1:80": 4}
            assert a.stats.matches_sent == 1

    run(scenario)


def test_rate_limit_caps_answers() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        events = Events()
        clock = FakeClock()  # frozen: the bucket never refills
        async with node(
            "127.0.0.1", {S1: 1}, port, rate_limit=5, clock=clock, on_event=events, max_delay_ms=1
        ):
            client = raw_socket("127.0.0.9")
            for i in range(20):
                client.sendto(Probe(f"urn:uuid:r{i}", (S1,)).to_bytes(), (GROUP_V4, port))
            await events.wait(
                lambda: events.count("probe_answered") + events.count("dropped") == 20
            )
            assert events.count("probe_answered") == 5
            assert events.count("dropped", "rate_limited") == 15
            loop = asyncio.get_running_loop()
            answers = set()
            for _ in range(5):
                async with asyncio.timeout(5):
                    data = await loop.sock_recv(client, 65536)
                answers.add(parse_probe_match(data).relates_to)
            assert answers == {f"urn:uuid:r{i}" for i in range(5)}
            client.close()

    run(scenario)


def test_answers_are_cached_briefly_and_bounded() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        clock = FakeClock()
        holder = node("127.0.0.1", {S1: 2}, port)
        asker = node("127.0.0.2", {}, port, clock=clock, cache_ttl=3.0, cache_size=2)
        async with holder, asker:
            first = await asker.find([S1, S4], window=WINDOW)
            assert asker.stats.probes_sent == 1
            assert await asker.find([S1, S4], window=WINDOW) == first  # no new probe
            assert asker.stats.probes_sent == 1
            clock.now += 3.5
            assert await asker.find([S1], window=WINDOW) == {S1: first[S1]}
            assert asker.stats.probes_sent == 2
            await asker.find([S2, S3], window=WINDOW)  # evicts the two oldest (bounded)
            assert asker.stats.probes_sent == 3
            await asker.find([S1], window=WINDOW)
            assert asker.stats.probes_sent == 4
            asker.forget([S1])
            await asker.find([S1], window=WINDOW)
            assert asker.stats.probes_sent == 5

    run(scenario)


def test_probes_and_answers_from_another_subnet_are_dropped() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        events = Events()
        async with node("127.0.0.1", {S1: 3}, port, on_event=events) as a:
            outsider = raw_socket("10.77.0.1")  # on lo, but in 10.77.0.0/24
            outsider.sendto(Probe("urn:uuid:outside", (S1,)).to_bytes(), (GROUP_V4, port))
            await events.wait(lambda: events.count("dropped", "off_subnet") == 1)
            assert a.stats.probes_received == 0 and a.stats.matches_sent == 0

            # An answer from off-subnet to a probe of ours does not count either.
            async def answer_from_outside() -> None:
                await events.wait(lambda: events.count("probe_sent") == 1)
                (message_id,) = a._pending
                match = ProbeMatch("urn:uuid:x", message_id, ("10.77.0.1:80",), ((S4, 9),))
                outsider.sendto(match.to_bytes(), a.unicast_addresses[0])

            helper = asyncio.ensure_future(answer_from_outside())
            assert await a.find([S4], window=WINDOW) == {S4: []}
            await helper
            assert events.count("dropped", "off_subnet") == 2
            outsider.close()

    run(scenario, aliases=(("77", "10.77.0.1", "255.255.255.0"),))


def test_an_address_on_no_interface_is_a_config_error() -> None:
    async def scenario() -> None:
        with pytest.raises(ConfigError) as err:
            async with node("192.0.2.123", {}, free_udp_port()):
                pass
        assert err.value.key == "peers.interfaces"

    run(scenario)


def test_bad_advertise_fails_at_construction() -> None:
    with pytest.raises(ConfigError) as err:
        Discovery(Directory({}), interface_addresses=["127.0.0.1"], advertise="nope")
    assert err.value.key == "peers.advertise"


def test_exit_cancels_planned_answers() -> None:
    async def scenario() -> None:
        port = free_udp_port()
        events = Events()
        a = node("127.0.0.1", {S1: 1}, port, on_event=events, max_delay_ms=60_000)
        async with a:
            client = raw_socket("127.0.0.9")
            client.sendto(Probe("urn:uuid:slow", (S1,)).to_bytes(), (GROUP_V4, port))
            await events.wait(lambda: events.count("probe_received", "answering") == 1)
            assert len(a._timers) == 1
            client.close()
        assert not a._timers and a.stats.matches_sent == 0

    run(scenario)


def test_find_returns_once_every_id_has_holders_and_the_back_off_passed() -> None:
    """With holders for every id, find() does not sit out a long window (3.4: it still waits
    the longest responder back-off, so every holder that heard the probe is in the answer)."""

    async def scenario() -> None:
        port = free_udp_port()
        a = node("127.0.0.1", {S1: 5}, port)
        b = node("127.0.0.2", {S1: 7}, port)
        c = node("127.0.0.3", {}, port)
        async with a, b, c:
            found = await asyncio.wait_for(c.find([S1], window=60.0), timeout=10.0)
            assert by_xaddr(found[S1]) == {"127.0.0.1:80": 5, "127.0.0.2:80": 7}
            # An id nobody holds keeps the whole window: it is no early answer.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(c.find([S4], window=60.0), timeout=1.0)

    run(scenario)
