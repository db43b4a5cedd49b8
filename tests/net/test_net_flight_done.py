"""A DONE is acted on (nodes reading the content whole fetch the piece from its endpoint
unasked) only when its endpoint is on the address the datagram came from: a lying peer
cannot point the branch at a third machine or at a host's own loopback services."""

from __future__ import annotations

from peerdistd.net.flight import FlightNet
from peerdistd.proto import flight
from peerdistd.proto.flight import Kind, Message, PieceId, PieceState


def done_from(endpoint: str) -> bytes:
    piece = PieceState(PieceId(b"\x11" * 32, 0), 16)
    return flight.serialize(Message(Kind.DONE, b"\x02" * 16, endpoint, 2000, (piece,)))


def test_a_done_naming_another_address_than_its_sender_is_not_acted_on() -> None:
    net = FlightNet(b"\x01" * 16, "10.0.0.1:8080", interface_addresses=[])
    heard: list[tuple[PieceId, str]] = []
    net.on_done(lambda piece, endpoint: heard.append((piece, endpoint)))
    net._datagram(done_from("10.0.0.7:8080"), ("10.0.0.5", 3703), None)  # another host
    net._datagram(done_from("127.0.0.1:631"), ("10.0.0.5", 3703), None)  # its loopback
    net._datagram(done_from("not-an-ip:80"), ("10.0.0.5", 3703), None)
    assert heard == []
    net._datagram(done_from("10.0.0.5:8080"), ("10.0.0.5", 3703), None)
    net._datagram(done_from("[fe80::5]:8080"), ("fe80::5%eth0", 3703, 0, 2), None)
    assert [endpoint for _, endpoint in heard] == ["10.0.0.5:8080", "[fe80::5]:8080"]
