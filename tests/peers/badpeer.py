"""A misbehaving peer for tests: a proxy, inside the test's own network namespace, in front of
a real daemon's retrieval server. The daemon advertises the proxy's address in its discovery
answers (``peers.advertise``), so other nodes ask the proxy, which

- ``trickle``: relays the answers at ``rate`` bytes per second,
- ``reset``: resets every connection as soon as it is accepted (SO_LINGER 0),
- ``hangup``: closes every connection as soon as it is accepted (what a killed peer does).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType

from tests.netns import enter_netns

CHUNK = 1024


class BadPeer:
    """Runs the proxy on a loop of its own in a thread that entered ``netns``."""

    def __init__(
        self,
        netns: str,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        mode: str,
        rate: int = 8192,
    ) -> None:
        assert mode in ("trickle", "reset", "hangup")
        self.netns, self.listen, self.upstream, self.mode, self.rate = (
            netns,
            listen,
            upstream,
            mode,
            rate,
        )
        self.connections = 0  # accepted (read from the test's thread: plain ints)
        self.bytes_relayed = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._handlers: set[asyncio.Task[object]] = set()
        self._transports: set[asyncio.WriteTransport] = set()
        self._thread = threading.Thread(target=self._run, name=f"bad-peer-{mode}")

    def __enter__(self) -> BadPeer:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None or self._loop is None:
            self._thread.join(5)
            raise RuntimeError(f"bad peer did not start: {self._error!r}")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def _run(self) -> None:
        try:
            enter_netns(self.netns)
            asyncio.run(self._main())
        except BaseException as exc:  # handed to the test's thread by __enter__
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._serve, *self.listen)
        self._loop = asyncio.get_running_loop()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for transport in list(self._transports):  # ends every handler
                transport.abort()
            if self._handlers:
                await asyncio.wait(list(self._handlers), timeout=10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        self._transports.add(writer.transport)
        try:
            if self.mode == "reset":
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            elif self.mode == "hangup":
                writer.close()
            else:
                await self._trickle(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)
            self._transports.discard(writer.transport)
            writer.close()

    async def _trickle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self._transports.add(up_writer.transport)

        async def requests() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()
            up_writer.close()

        async def answers() -> None:
            while data := await up_reader.read(CHUNK):
                writer.write(data)
                await writer.drain()
                self.bytes_relayed += len(data)
                await asyncio.sleep(len(data) / self.rate)  # the trickle itself
            writer.close()

        try:
            with contextlib.suppress(ConnectionError):
                await asyncio.gather(requests(), answers())
        finally:
            self._transports.discard(up_writer.transport)
            up_writer.close()
