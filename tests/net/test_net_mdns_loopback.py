"""Zeroconf announce/browse on 127.0.0.1 only, in a private network namespace."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from pathlib import Path
from typing import Any

import pytest

from peerdistd.errors import ConfigError, DecodeError
from peerdistd.net.mdns import Mdns, MdnsPeer, check_node_id, decode_txt, encode_txt


def _load_netns() -> Any:
    path = Path(__file__).with_name("test_net_discovery_netns.py")
    spec = importlib.util.spec_from_file_location("_peerdist_netns", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


netns = _load_netns()
ALPHA, BETA = "a1" * 16, "b2" * 16


def test_two_nodes_see_each_other_and_the_withdrawal() -> None:
    async def scenario() -> None:
        alpha = Mdns(ALPHA, 8080, interfaces=["127.0.0.1"], clock=lambda: 1700000000.0)
        beta = Mdns(BETA, 9090, interfaces=["127.0.0.1"], versions=(1,), hosted_cache=True)
        async with contextlib.AsyncExitStack() as stack:
            await asyncio.gather(*(stack.enter_async_context(m) for m in (alpha, beta)))
            await alpha.wait_for(lambda peers: BETA in peers, timeout=10)
            await beta.wait_for(lambda peers: ALPHA in peers, timeout=10)
            assert alpha.peers()[BETA] == MdnsPeer(
                BETA, ("127.0.0.1",), 9090, (1,), True, 1700000000.0
            )
            seen = beta.peers()[ALPHA]
            assert (seen.port, seen.versions, seen.hosted_cache) == (8080, (1, 2), False)
            assert list(alpha.peers()) == [BETA]  # never itself
            assert alpha.peers_json() == [
                {
                    "node_id": BETA,
                    "address": "127.0.0.1:9090",
                    "last_seen": 1700000000.0,
                    "source": "zeroconf",
                    "versions": [1],
                    "hosted_cache": True,
                }
            ]
            await beta.aclose()  # withdraw: goodbye packets
            await alpha.wait_for(lambda peers: BETA not in peers, timeout=10)
            assert alpha.peers() == {}

    netns.run_isolated(scenario)


def test_txt_round_trip() -> None:
    txt = encode_txt(ALPHA, 80, (1, 2), hosted_cache=True)
    assert txt == {"txtvers": "1", "id": ALPHA, "port": "80", "pv": "1,2", "role": "hosted-cache"}
    raw = {k.encode(): v.encode() for k, v in txt.items()}
    assert decode_txt(raw) == (ALPHA, 80, (1, 2), True)
    assert decode_txt({**raw, b"role": b"peer", b"pv": b"2"}) == (ALPHA, 80, (2,), False)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"id", b""),
        (b"id", b"x" * 64),
        (b"id", b"no spaces"),
        (b"id", None),
        (b"port", b"0"),
        (b"port", b"65536"),
        (b"port", b"http"),
        (b"pv", b"1,x"),
        (b"pv", b"3"),
        (b"role", b"king"),
        (b"role", b"\xff"),
    ],
)
def test_bad_txt_is_a_decode_error(key: bytes, value: bytes | None) -> None:
    raw: dict[bytes, bytes | None] = {
        k.encode(): v.encode() for k, v in encode_txt(ALPHA, 80, (1,), False).items()
    }
    raw[key] = value
    with pytest.raises(DecodeError):
        decode_txt(raw)


@pytest.mark.parametrize("bad", ["", "a.b", "x" * 64, "ünï"])
def test_node_id_must_be_a_dns_label(bad: str) -> None:
    with pytest.raises(ConfigError):
        check_node_id(bad)
    with pytest.raises(ConfigError):
        Mdns(bad, 80, interfaces=["127.0.0.1"])
