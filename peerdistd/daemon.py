"""``peerdistd``: the composition root. Builds every part from the configuration, serves the
local API and the peer protocols, and shuts everything down within a bounded time.

Lifecycle (after hypercorn): signal -> event -> bounded graceful shutdown. READY=1 is sent to
systemd only once every socket is bound; STOPPING=1 as soon as shutdown begins.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import grp
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from peerdistd import __version__, errors
from peerdistd.api.app import make_app
from peerdistd.api.failures import ApiRunner
from peerdistd.config import Config, MetricsConfig, diff_for_reload, ensure_private_dir, load_config
from peerdistd.engine.core import Engine, EngineSettings
from peerdistd.engine.ports import PeerNetwork
from peerdistd.engine.scrub import run_scrub
from peerdistd.engine.stats import Counters
from peerdistd.file_limit import raise_file_limit
from peerdistd.logs import LEVELS, setup_logging
from peerdistd.malloc_tuning import tune_malloc
from peerdistd.peering import PeerNode, start_peer_node
from peerdistd.store.blockcache import BlockCache
from peerdistd.store.cache_scrub import Scrubber
from peerdistd.store.publications import PublicationStore
from peerdistd.store.secret import load_or_create_secret
from peerdistd.systemd import Notifier, check_local, listen_fds, watchdog_interval

log = logging.getLogger("peerdistd")

HOUSEKEEPING_INTERVAL = 2.0  # watchdog, idle handles, the cache write probe
DEFAULT_METRICS_LISTEN = MetricsConfig().listen


def engine_settings(config: Config) -> EngineSettings:
    return EngineSettings(
        enabled=config.daemon.enabled,
        max_inflight=config.peers.max_inflight,
        handle_idle_timeout=config.daemon.handle_idle_timeout,
        held_total_limit=config.daemon.held_limit_bytes,
        piece_size=config.peers.piece_size,
    )


def socket_dir_mode(mode: int, group: str) -> int:
    """The socket directory's mode: 0700 (a per-user daemon's) unless other users are meant to
    reach the socket, through ``daemon.socket_group`` or a mode open to everyone."""
    return 0o755 if group or mode & 0o007 else 0o700


def bind_unix_socket(path: Path, mode: int, group: str) -> socket.socket:
    """Bind the API socket; a stale socket file of a dead daemon is replaced, a live one not."""
    ensure_private_dir(path.parent, socket_dir_mode(mode, group))
    if path.is_socket():
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()
        else:
            raise errors.ConfigError("daemon.socket", f"another daemon is listening on {path}")
        finally:
            probe.close()
    elif path.exists():
        raise errors.ConfigError("daemon.socket", f"{path} exists and is not a socket")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old)
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise errors.ConfigError("daemon.socket_group", f"no group {group!r}") from None
        os.chown(path, -1, gid)
    path.chmod(mode)
    sock.listen(128)
    return sock


class Daemon:
    """Every long-lived part of one node; ``run()`` serves until told to stop."""

    def __init__(
        self, config: Config, config_path: Path | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.env = env  # the environment plus command-line overrides, re-applied on reload
        self.notifier = Notifier()
        self.stopping = asyncio.Event()
        self.started = time.time()
        self.node_id = ""
        self.listening: dict[str, Any] = {}
        self.engine: Engine | None = None
        self.store: BlockCache | None = None
        self.scrubber: Scrubber | None = None
        self.peer_node: PeerNode | None = None
        self.bound_socket: tuple[Path, int] | None = None  # (path, inode) of a socket we bound

    def info(self) -> Mapping[str, Any]:
        info: dict[str, Any] = {
            "version": __version__,
            "node_id": self.node_id,
            "uptime": round(time.time() - self.started, 3),
            "listen": self.listening,
        }
        if self.scrubber is not None:
            rate = self.config.cache.scrub_bytes_per_second
            info["scrub"] = {"bytes_per_second": rate, **self.scrubber.stats.as_json()}
        return info

    async def run(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            await self._start(stack)
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.stopping.set)
            loop.add_signal_handler(signal.SIGHUP, self.reload)
            stack.callback(self._remove_signal_handlers, loop)
            housekeeping = asyncio.ensure_future(self._housekeeping())
            scrub = asyncio.ensure_future(self._scrub())  # store.cache_scrub, engine.scrub
            self.notifier.ready(f"serving on {self.listening.get('socket')}")
            await self.stopping.wait()
            self.notifier.stopping()
            log.info("shutting down")
            for task in (housekeeping, scrub):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        log.info("stopped")

    @staticmethod
    def _remove_signal_handlers(loop: asyncio.AbstractEventLoop) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(sig)

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        paths = cfg.paths
        ensure_private_dir(paths.state_dir, key="daemon.state_dir")
        ensure_private_dir(paths.cache_dir, key="daemon.cache_dir")
        passphrase = load_or_create_secret(paths.secret_file)
        self.node_id = _node_id(paths.state_dir)
        store = BlockCache.open(
            paths.cache_dir / "blocks",
            limit_bytes=cfg.cache.limit_bytes or None,
            limit_percent=cfg.cache.limit_percent,
        )
        stack.callback(store.close)
        self.store = store
        usage = store.usage()
        log.info(
            "node %s: state in %s, cache in %s (%d of at most %d bytes used)",
            self.node_id, paths.state_dir, paths.cache_dir, usage.bytes_used, usage.limit_bytes,
        )  # fmt: skip
        self.scrubber = Scrubber(store)
        publications = PublicationStore.open(paths.state_dir / "publications.db")
        stack.callback(publications.close)
        counters = Counters()
        peers = await self._start_peers(stack, store, counters)
        engine = Engine(
            store if self.peer_node is None else self.peer_node.engine_store(store),
            publications,
            passphrase,
            peers=peers,
            settings=engine_settings(cfg),
            stats=counters,
            claims=self.peer_node.flight if self.peer_node is not None else None,
        )
        if self.peer_node is not None:
            engine.extra_stats.append(self._peer_stats)
            engine.extra_stats.append(self.peer_node.hosted_stats)
        engine.extra_stats.append(self._store_stats)
        self.engine = engine
        stack.push_async_callback(engine.aclose)
        app = make_app(engine, info=self.info, peers=self._peer_list)
        runner = ApiRunner(app, handler_cancellation=True, access_log=None)
        await runner.setup()
        stack.callback(self._remove_socket)  # runs after the runner's clean-up below
        stack.push_async_callback(self._cleanup_runner, runner)
        await self._serve_api(runner)
        await self._start_metrics(stack, engine)

    async def _cleanup_runner(self, runner: web.AppRunner) -> None:
        assert self.engine is not None
        self.engine.events.close()  # end event streams so the server can close them
        try:
            await asyncio.wait_for(runner.cleanup(), self.config.daemon.shutdown_timeout)
        except TimeoutError:
            log.warning("API connections did not close within the shutdown timeout")

    async def _serve_api(self, runner: web.AppRunner) -> None:
        cfg = self.config
        inherited = listen_fds()
        if inherited:
            sock = inherited[0]
            check_local(sock)  # the API never faces a network, however it is handed over
            where = f"fd {sock.fileno()} (socket activation)"
            with contextlib.suppress(OSError):
                where = str(sock.getsockname()) or where
        else:
            sock = bind_unix_socket(
                cfg.paths.socket, int(cfg.daemon.socket_mode, 8), cfg.daemon.socket_group
            )
            self.bound_socket = (cfg.paths.socket, cfg.paths.socket.stat().st_ino)
            where = str(cfg.paths.socket)
        await web.SockSite(runner, sock).start()
        self.listening["socket"] = where
        log.info("API listening on %s", where)
        if cfg.daemon.api_tcp:
            host, _, port = cfg.daemon.api_tcp.rpartition(":")
            site = web.TCPSite(runner, host.strip("[]"), int(port))
            await site.start()
            self.listening["tcp"] = site.name
            log.info("API also listening on %s", site.name)

    def _remove_socket(self) -> None:
        """A clean stop removes the socket file we bound, so no client finds a dead one.

        Only ours: a socket handed over by systemd (socket activation) belongs to the .socket
        unit and stays, and a file that is no longer our inode is someone else's.
        """
        if self.bound_socket is None:
            return
        path, inode = self.bound_socket
        with contextlib.suppress(OSError):
            if path.lstat().st_ino == inode:
                path.unlink()

    async def _start_peers(
        self, stack: contextlib.AsyncExitStack, store: BlockCache, counters: Counters
    ) -> PeerNetwork | None:
        self.listening["peers"] = None
        if not self.config.peers.enabled:
            return None
        node = await stack.enter_async_context(
            start_peer_node(self.config, store, counters, self.node_id)
        )
        self.peer_node = node
        self.listening["peers"] = node.advertise
        return node.network

    async def _start_metrics(self, stack: contextlib.AsyncExitStack, engine: Engine) -> None:
        listen = self.config.metrics.listen
        if not listen:
            return
        from peerdistd.metrics import make_registry, start_metrics_server  # noqa: PLC0415

        host, _, port = listen.rpartition(":")
        try:
            server = await stack.enter_async_context(
                start_metrics_server(make_registry(engine), host.strip("[]"), int(port))
            )
        except errors.ConfigError as exc:
            if listen != DEFAULT_METRICS_LISTEN:
                raise  # a port the admin chose must be served, or the start fails
            # The embedded default taken (a second daemon on this host, say the system
            # service beside `make run`): start without metrics rather than not at all.
            log.warning(
                "metrics off: %s (another peerdistd on this host?); set metrics.listen to a "
                "free port, or '' to turn metrics off without this warning",
                exc,
            )
            return
        self.listening["metrics"] = getattr(server, "url", listen)

    def _peer_stats(self) -> Mapping[str, float]:
        assert self.peer_node is not None
        return self.peer_node.counters()

    def _store_stats(self) -> Mapping[str, float]:
        assert self.store is not None and self.scrubber is not None
        stats = self.scrubber.stats
        return {
            "scrub_blocks": float(stats.blocks_checked),
            "scrub_bad_blocks": float(stats.bad_blocks),
            "store_heals": float(len(self.store.notes()) + len(self._publication_notes())),
        }

    def _publication_notes(self) -> list[Any]:
        return [] if self.engine is None else self.engine.publications.notes()

    async def _scrub(self) -> None:
        assert self.scrubber is not None
        assert self.store is not None
        store = self.store
        await run_scrub(
            self.scrubber.step,
            lambda: self.config.cache.scrub_bytes_per_second,
            lambda: store.writes,
        )

    def _peer_list(self) -> list[Mapping[str, Any]]:
        return [] if self.peer_node is None else self.peer_node.peers()

    async def _housekeeping(self) -> None:
        interval = watchdog_interval()
        period = min(HOUSEKEEPING_INTERVAL, interval) if interval else HOUSEKEEPING_INTERVAL
        while True:
            if interval:  # sd_watchdog_enabled(3): ping only when this process is watched
                self.notifier.watchdog()
            if self.engine is not None:
                self.engine.reclaim_idle()
                self._check_cache_writable()
            await asyncio.sleep(period)

    def _check_cache_writable(self) -> None:
        assert self.engine is not None
        if self.engine.status == "DISABLED":
            return
        # Write a byte for real: permissions say nothing to root, and a file system that went
        # read-only (I/O errors) or full only shows when written to.
        probe = self.config.paths.cache_dir / f".probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"\0")
            finally:
                os.close(fd)
                probe.unlink()
        except OSError as exc:
            if self.engine.status != "UNAVAILABLE":
                log.error("cache directory not writable, status UNAVAILABLE: %s", exc)
            reason = exc.strerror or str(exc)
            self.engine.set_status("UNAVAILABLE", f"cache directory not writable: {reason}")
        else:
            self.engine.set_status("AVAILABLE")

    def _apply(self, new: Config) -> None:
        """Put the run-time changeable keys (config.RELOADABLE) into effect."""
        logging.getLogger().setLevel(LEVELS[new.daemon.log_level])
        if self.engine is not None:
            self.engine.set_enabled(new.daemon.enabled)
            self.engine.settings.handle_idle_timeout = new.daemon.handle_idle_timeout
            self.engine.slots.resize(new.peers.max_inflight)
        if self.store is not None and new.cache != self.config.cache:
            limit = self.store.set_limit(
                limit_bytes=new.cache.limit_bytes or None,
                limit_percent=new.cache.limit_percent,
            )
            log.info("cache limit is now %d bytes", limit)
        if self.peer_node is not None:
            self.peer_node.swarm.ban_seconds = new.peers.ban_seconds
            self.peer_node.swarm.window = new.peers.discovery_window_ms / 1000.0
            self.peer_node.swarm.failures_to_ban = new.peers.failures_to_ban
            self.peer_node.swarm.min_rate = float(new.peers.min_transfer_rate)
            hosted = self.peer_node.hosted is not None  # a hosted cache has its own limit
            limit = new.hosted_cache.upload_limit if hosted else new.peers.upload_limit
            self.peer_node.server.upload_limit = limit
            self.peer_node.swarm.windows.limit = max(1, new.peers.max_inflight)

    def reload(self) -> None:
        """SIGHUP: apply what can change at run time; say what needs a restart."""
        self.notifier.reloading()
        try:
            new = load_config(self.config_path, self.env)
        except errors.ConfigError as exc:
            log.error("reload refused, configuration invalid: %s", exc)
            self.notifier.ready()
            return
        applied, restart = diff_for_reload(self.config, new)
        self._apply(new)
        self.config = new
        log.info(
            "reloaded: applied %s; needing a restart: %s",
            ", ".join(applied) or "nothing",
            ", ".join(restart) or "nothing",
        )
        self.notifier.ready()


def _node_id(state_dir: Path) -> str:
    """A stable id of this node, kept in the state directory."""
    path = state_dir / "node-id"
    try:
        value = path.read_text().strip()
        if len(value) == 32:
            return value
    except OSError:
        pass
    value = os.urandom(16).hex()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    tmp.replace(path)
    return value


def _cli_overrides(args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ)
    for key, value in (
        ("DAEMON_STATE_DIR", args.state_dir),
        ("DAEMON_CACHE_DIR", args.cache_dir),
        ("DAEMON_SOCKET", args.socket),
        ("DAEMON_LOG_FORMAT", args.log_format),
        ("DAEMON_LOG_LEVEL", args.log_level),
        ("DAEMON_API_TCP", args.api_tcp),
        ("PEERS_LISTEN", args.listen),
        ("METRICS_LISTEN", args.metrics),
    ):
        if value is not None:
            env[f"PEERDISTD_{key}"] = value
    if args.no_peers:
        env["PEERDISTD_PEERS_ENABLED"] = "false"
    return env


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="peerdistd", description="BranchCache for Linux.")
    parser.add_argument("--version", action="version", version=f"peerdistd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the daemon in the foreground")
    serve.add_argument("--config", type=Path, help="TOML configuration file")
    serve.add_argument("--state-dir", help="state directory (publications, secret)")
    serve.add_argument("--cache-dir", help="block cache directory")
    serve.add_argument("--socket", help="path of the API Unix socket")
    serve.add_argument("--api-tcp", help="also serve the API on loopback HOST:PORT")
    serve.add_argument("--listen", help="peer retrieval listener ADDR:PORT (peers.listen)")
    serve.add_argument("--metrics", help="Prometheus endpoint HOST:PORT ('' = off)")
    serve.add_argument("--no-peers", action="store_true", help="local cache only, no LAN traffic")
    serve.add_argument("--log-format", choices=("text", "json"))
    serve.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    check = sub.add_parser("check-config", help="validate the configuration and exit")
    check.add_argument("--config", type=Path, help="TOML configuration file")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``peerdistd``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        from peerdistd.config import check_config  # noqa: PLC0415

        problems = check_config(args.config)
        for problem in problems:
            print(f"peerdistd: {problem}", file=sys.stderr)
        if not problems:
            print("configuration OK")
        return 1 if problems else 0
    if args.command != "serve":
        parser.print_help()
        return 2
    env = _cli_overrides(args)
    try:
        config = load_config(args.config, env)
    except errors.ConfigError as exc:
        print(f"peerdistd: configuration error: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.daemon.log_level, config.daemon.log_format)
    tune_malloc()  # before any thread starts (malloc_tuning)
    raise_file_limit()  # the cache keeps up to 1,024 segment files open (file_limit)
    daemon = Daemon(config, args.config, env)
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(daemon.run())
    except errors.ConfigError as exc:
        log.error("cannot start: %s", exc)
        return 2
    except errors.PeerDistError as exc:
        log.error("cannot start: %s", exc)
        return 1
    except OSError as exc:  # a file system that refuses (read-only, full): said, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        log.error("cannot start: %s%s; fix that path or choose another", where, exc.strerror)
        return 1
    return 0


def _loop_factory() -> Any:
    try:
        import uvloop  # noqa: PLC0415
    except ImportError:
        return None
    return uvloop.new_event_loop


if __name__ == "__main__":
    sys.exit(main())
