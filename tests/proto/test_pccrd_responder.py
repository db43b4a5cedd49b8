"""The sans-IO PCCRD responder: subnet rule, own probes, back-off, numbering, rate limit."""

from __future__ import annotations

import ipaddress
import random

import pytest

from peerdistd.errors import ConfigError, DecodeError
from peerdistd.proto.pccrd import Probe, parse_probe_match, split_for_probes
from peerdistd.proto.pccrd_responder import (
    ON_LINK_SOURCES,
    Ignore,
    LocalInterface,
    PlannedReply,
    Responder,
    is_local_source,
    local_interface_for,
)

SID = b"\x5a" * 32
PROBE = Probe("urn:uuid:p1", (SID,)).to_bytes()
LAN = LocalInterface.of("192.168.10.4", 24)
LINK = LocalInterface.of("fe80::1%eth0", 64)
LOOP = LocalInterface.of("127.0.0.2", 8)


def held(ids: object) -> dict[bytes, int]:
    return {SID: 3}


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def responder(**kw: object) -> Responder:
    args: dict[str, object] = {"instance_id": 11, "rng": random.Random(5)}
    args.update(kw)
    return Responder("0.0.0.0:8080", [LAN, LINK, LOOP], **args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("192.168.10.77", True),
        ("192.168.11.77", False),
        ("10.0.0.1", False),
        ("::ffff:192.168.10.9", True),  # IPv4-mapped, as a dual-stack socket reports it
        ("fe80::99%eth0", True),
        ("fe80::99", True),
        ("2001:db8::1", False),
        ("127.0.0.3", True),
        ("not-an-address", False),
        ("", False),
    ],
)
def test_subnet_rule(source: str, expected: bool) -> None:
    networks = [LAN.network, LINK.network, LOOP.network]
    assert is_local_source(source, networks) is expected


def test_subnet_rule_with_no_networks_drops_everything() -> None:
    assert not is_local_source("192.168.10.77", [])
    assert not is_local_source("192.168.10.77", [ipaddress.ip_network("::/0")])


def test_interface_is_chosen_by_subnet_then_scope() -> None:
    eth1 = LocalInterface.of("fe80::2%eth1", 64)
    assert local_interface_for("192.168.10.200", [LOOP, LAN]) == LAN
    assert local_interface_for("fe80::5%eth1", [LINK, eth1]) == eth1
    assert local_interface_for("fe80::5%eth0", [LINK, eth1]) == LINK
    assert local_interface_for("8.8.8.8", [LOOP, LAN, LINK]) is None


def test_off_subnet_probe_is_ignored_before_parsing() -> None:
    r = responder()
    assert r.decide(b"garbage", ("203.0.113.5", 3702), held) is Ignore.OFF_SUBNET
    assert r.respond(PROBE, ("203.0.113.5", 3702), held) is None
    assert r.message_number == 0


def test_malformed_on_subnet_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        responder().decide(b"<x/>", ("192.168.10.5", 3702), held)


def test_own_probe_and_no_match_are_ignored() -> None:
    r = responder()
    src = ("192.168.10.5", 3702)
    assert r.decide(PROBE, src, held, own={"urn:uuid:p1"}) is Ignore.OWN_PROBE
    assert r.decide(PROBE, src, lambda ids: {}) is Ignore.NO_MATCH
    assert r.decide(PROBE, src, lambda ids: {SID: 0}) is Ignore.NO_MATCH


def test_reply_plan_wildcard_advertise_and_numbering() -> None:
    r = responder()
    delays = []
    for n in (1, 2, 3):
        planned = r.decide(PROBE, ("192.168.10.5", 50001), held)
        assert isinstance(planned, PlannedReply)
        assert planned.destination == ("192.168.10.5", 50001)
        assert planned.via == "192.168.10.4"
        assert planned.relates_to == "urn:uuid:p1"
        assert planned.segment_ids == (SID,)
        match = parse_probe_match(planned.payload)
        assert match.xaddrs == ("192.168.10.4:8080",)  # 0.0.0.0 -> the probe's interface
        assert (match.instance_id, match.message_number) == (11, n)
        assert match.endpoint == r.endpoint
        delays.append(planned.delay_ms)
    v6 = r.decide(PROBE, ("fe80::7%eth0", 50001, 0, 2), held)
    assert isinstance(v6, PlannedReply)
    assert parse_probe_match(v6.payload).xaddrs == ("[fe80::1]:8080",)
    assert v6.destination == ("fe80::7%eth0", 50001, 0, 2)
    assert all(1 <= d <= 65 for d in delays)


def test_backoff_spans_one_to_app_max_delay() -> None:
    r = responder(rate_limit=1e9)
    seen = set()
    for _ in range(2000):
        planned = r.respond(PROBE, ("192.168.10.5", 1), held)
        assert planned is not None
        seen.add(planned.delay_ms)
    assert seen == set(range(1, 66))


def test_fixed_advertise_is_used_as_is() -> None:
    r = Responder("10.9.9.9:81", [LAN], instance_id=1)
    planned = r.respond(PROBE, ("192.168.10.5", 1), held)
    assert planned is not None
    assert parse_probe_match(planned.payload).xaddrs == ("10.9.9.9:81",)


@pytest.mark.parametrize("bad", ["", "host", "1.2.3.4:0", "1.2.3.4:99999", "a b:1", "[zz]:1"])
def test_bad_advertise_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError) as err:
        Responder(bad, [LAN], instance_id=1)
    assert err.value.key == "peers.advertise"


def test_rate_limit_refills_with_the_clock() -> None:
    clock = FakeClock()
    r = responder(rate_limit=10.0, clock=clock)
    src = ("192.168.10.5", 1)
    answers = [r.decide(PROBE, src, held) for _ in range(15)]
    assert sum(isinstance(a, PlannedReply) for a in answers) == 10  # a burst of one second
    assert answers[10:] == [Ignore.RATE_LIMITED] * 5
    clock.now += 0.35
    refilled = [r.decide(PROBE, src, held) for _ in range(5)]
    assert [isinstance(a, PlannedReply) for a in refilled] == [True] * 3 + [False] * 2
    assert r.message_number == 13  # silence does not consume message numbers


def test_split_for_probes_fits_the_budget_and_keeps_order() -> None:
    ids = [bytes([i]) * 32 for i in range(40)]
    v1 = split_for_probes(ids)
    assert [sid for group in v1 for sid in group] == ids
    assert all(len(Probe("urn:uuid:" + "0" * 36, g).to_bytes()) <= 1400 for g in v1)
    assert len(v1) == 5
    v2 = split_for_probes([*ids, b"\1" * 48], 2)
    assert [len(g) for g in v2] == [14, 14, 12, 1]  # one id size per V2 probe
    assert all(len(Probe("urn:uuid:" + "0" * 36, g, 2).to_bytes()) <= 1400 for g in v2)
    assert split_for_probes([SID, SID]) == [(SID,)]
    assert split_for_probes([]) == []


def test_the_interface_of_a_source_is_remembered_until_the_interfaces_change() -> None:
    r = responder()
    assert isinstance(r.decide(PROBE, ("192.168.10.77", 3702), held), PlannedReply)
    # The node left that subnet: the remembered answer goes with it.
    r.interfaces = [LINK, LOOP]
    assert r.decide(PROBE, ("192.168.10.77", 3702), held) is Ignore.OFF_SUBNET
    r.interfaces = [LAN]
    assert r.interface_for("192.168.10.77") == LAN
    assert r.interface_for("fe80::99%eth0") is None


def test_remembered_sources_are_bounded() -> None:
    r = responder()
    for n in range(3 * ON_LINK_SOURCES):
        host = f"192.168.{10 + n % 2}.{n % 250 + 1}" if n % 3 else f"10.{n // 250}.{n % 250}.1"
        expected = local_interface_for(host, r.interfaces)
        assert r.interface_for(host) == expected
        assert len(r._on_link) <= ON_LINK_SOURCES
