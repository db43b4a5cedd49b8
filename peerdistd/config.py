"""Configuration: embedded defaults, an optional TOML file, ``PEERDISTD_<SECTION>_<KEY>`` overrides.

Every key has a default, so no file is needed. Values are checked on load; a bad one raises
:class:`~peerdistd.errors.ConfigError` naming its key, and so does an unknown key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerdistd.config_checks import CHECKS, is_loopback
from peerdistd.errors import ConfigError
from peerdistd.paths import Paths, default_paths, home_of, systemd_dir, xdg_dir

ENV_PREFIX = "PEERDISTD_"
ENV_CONFIG = "PEERDISTD_CONFIG"  # the config file's path; not a key override


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    enabled: bool = True  # policy: false -> every API call but status answers NOT_SUPPORTED
    state_dir: str = ""  # "" = default_paths()
    cache_dir: str = ""
    socket: str = ""
    socket_mode: str = "0660"
    socket_group: str = ""
    api_tcp: str = ""  # optional loopback "127.0.0.1:PORT"
    handle_idle_timeout: float = 600.0
    shutdown_timeout: float = 10.0
    held_limit_bytes: int = 256 * 1024 * 1024  # unverified added bytes, all handles together
    log_level: str = "info"
    log_format: str = "text"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    limit_bytes: int = 0  # 0 = use limit_percent of the cache file system
    limit_percent: float = 5.0
    scrub_bytes_per_second: int = 4 * 1024 * 1024  # background re-hashing; 0 = off


@dataclass(frozen=True, slots=True)
class ContentConfig:
    version: int = 1
    hash: str = "sha256"  # V1 only ([MS-PCCRC] 2.3 dwHashAlgo); V2 is always truncated SHA-512
    secret_file: str = ""  # "" = <state_dir>/server-secret


@dataclass(frozen=True, slots=True)
class PeersConfig:
    listen: str = "0.0.0.0:80"  # [MS-PCCRR] 2.1.1: Windows peers connect to port 80
    advertise: str = ""
    interfaces: tuple[str, ...] = ()
    discovery_port: int = 3702  # [MS-PCCRD] 2.1
    discovery_window_ms: int = 300
    upload_limit: int = 64  # [MS-PCCRR] Appendix A: Windows' default upload limit
    max_inflight: int = 32
    max_inflight_per_peer: int = 8
    ban_seconds: int = 300
    request_timeout_ms: int = 2000  # [MS-PCCRR] Appendix A <9>: client request timer 2 s
    failures_to_ban: int = 8  # failed requests in a row (timeouts, slow, resets); 0 = never
    min_transfer_rate: int = 65536  # bytes/s a block answer must reach; 0 = no floor
    zeroconf: bool = True
    enabled: bool = True
    # Single flight across the branch (docs/single-flight.md): peerdistd nodes agree who
    # fetches each piece of a content from the origin.
    single_flight: bool = True
    piece_size: int = 1 << 20  # cap of a piece, bytes (lancache: larger slices stall waiters)
    claim_ttl_ms: int = 2000  # a claim with no news for this long is taken over
    claim_port: int = 3703  # UDP port of the claims' multicast group
    fetch_workers: int = 4  # `peerdist fetch`: pieces read and fetched at once
    # [MS-PCCRR] 2.2.3 CryptoAlgoId 0: serve unencrypted blocks to peers that ask for them.
    allow_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class HostedCacheConfig:
    """MS-PCHC: this node as the branch's hosted cache (server), or offering to one (client)."""

    enabled: bool = False  # server role: take offers, pull and serve what is offered
    listen: str = "0.0.0.0:443"  # [MS-PCHC] 2.1: v1.0 offers over HTTPS on 443
    certificate: str = ""  # PEM; "" = <state_dir>/hosted-cache-cert.pem, self-signed if absent
    private_key: str = ""  # PEM; "" = <state_dir>/hosted-cache-key.pem
    upload_limit: int = 1024  # [MS-PCCRR] 2.5: a hosted cache serves 1024 uploads at once
    pull_slots: int = 16  # blocks pulled from offerers at once
    offerer_rate: int = 0  # bytes per second pulled from one offerer; 0 = no limit
    pull_queue: int = 4096  # offered segments waiting to be pulled; more are not taken
    unverified_limit_bytes: int = 1 << 30  # v2-offered blocks, kept encrypted and unverified
    unverified_per_offerer_bytes: int = 256 << 20  # of which one offerer may fill this much
    server: str = ""  # client role: the hosted cache, "host" or "host:port"; "dns-sd" = find it
    server_v2_port: int = 80  # where it takes v2.0 offers (its PCCRR port)
    offer_version: int = 1  # 1 = INITIAL_OFFER + SEGMENT_INFO over HTTPS; 2 = BATCHED_OFFER
    ca_file: str = ""  # CA bundle to check its certificate; "" = the system's
    offer_queue: int = 1024  # completed segments waiting to be offered; more are skipped


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    listen: str = "127.0.0.1:9595"  # "" = off
    allow_remote: bool = False


def ensure_private_dir(path: Path, mode: int = 0o700, key: str = "daemon.socket") -> None:
    """Create ``path`` with ``mode`` if missing; refuse another user's directory (or symlink).

    ``key`` is the setting that chose ``path``: errors name it, and say how to fix them.
    """
    mine = (
        "a path in a directory of your own" if key == "daemon.socket" else "a directory of your own"
    )
    change = f"set {key} to {mine}"
    try:
        path.mkdir(mode=mode, parents=True, exist_ok=True)
        link, info = path.lstat(), path.stat()
    except OSError as exc:
        raise ConfigError(key, f"cannot create {path}: {exc.strerror}; {change}") from exc
    # A symlink is followed only if root or we made it: DynamicUser= makes $STATE_DIRECTORY a
    # root-owned link into /var/lib/private; one in /tmp made by someone else is an attack.
    owner = link.st_uid if link.st_uid != 0 or not stat.S_ISLNK(link.st_mode) else info.st_uid
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(key, f"{path} is not a directory; {change}")
    if owner != os.geteuid() or info.st_uid != os.geteuid():
        raise ConfigError(
            key,
            f"{path} belongs to uid {owner}, not to us (uid {os.geteuid()}); "
            f"chown it to uid {os.geteuid()}, or {change}",
        )
    if stat.S_IMODE(info.st_mode) & ~mode:
        path.chmod(mode)


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration; ``paths`` is resolved by :func:`load_config`."""

    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    content: ContentConfig = field(default_factory=ContentConfig)
    peers: PeersConfig = field(default_factory=PeersConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    hosted_cache: HostedCacheConfig = field(default_factory=HostedCacheConfig)
    paths: Paths = field(default_factory=default_paths)


SECTIONS: dict[str, type[Any]] = {
    "daemon": DaemonConfig,
    "cache": CacheConfig,
    "content": ContentConfig,
    "peers": PeersConfig,
    "metrics": MetricsConfig,
    "hosted_cache": HostedCacheConfig,
}

RELOADABLE: frozenset[str] = frozenset(
    {
        *("daemon.enabled", "daemon.log_level", "daemon.handle_idle_timeout"),
        *("cache.limit_bytes", "cache.limit_percent"),
        "cache.scrub_bytes_per_second",
        *("peers.upload_limit", "peers.max_inflight"),
        *("peers.ban_seconds", "peers.discovery_window_ms"),
        *("peers.failures_to_ban", "peers.min_transfer_rate"),
        "hosted_cache.upload_limit",
    }
)


# sockaddr_un's sun_path holds 108 bytes on Linux, the terminating NUL included (unix(7)).
MAX_SOCKET_PATH = 107


def _cross_checks(cfg: Config) -> None:
    peers, listen = cfg.peers, cfg.metrics.listen
    if len(os.fsencode(cfg.paths.socket)) > MAX_SOCKET_PATH:
        raise ConfigError(
            "daemon.socket",
            f"{cfg.paths.socket} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket path "
            "may have; choose a shorter path",
        )
    if peers.max_inflight_per_peer > peers.max_inflight:
        raise ConfigError(
            "peers.max_inflight_per_peer",
            f"must not exceed peers.max_inflight ({peers.max_inflight}), "
            f"got {peers.max_inflight_per_peer}",
        )
    if peers.single_flight and peers.enabled and peers.claim_port == peers.discovery_port:
        raise ConfigError("peers.claim_port", "must differ from peers.discovery_port")
    if listen and not cfg.metrics.allow_remote and not is_loopback("metrics.listen", listen):
        raise ConfigError(
            "metrics.listen",
            f"{listen!r} is not a loopback address; set metrics.allow_remote = true to allow it",
        )


_BOOLS = {"1": True, "true": True, "yes": True, "on": True}
_BOOLS |= {"0": False, "false": False, "no": False, "off": False}
_KINDS = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}


def _parse_env(kind: type, text: str) -> Any:
    """Environment text as the key's type (lists are comma-separated); unparsable text stays."""
    text = text.strip() if kind is not str else text
    try:
        if kind is bool:
            return _BOOLS.get(text.lower(), text)
        if kind is tuple:
            return [item.strip() for item in text.split(",") if item.strip()]
        return int(text, 10) if kind is int else float(text) if kind is float else text
    except ValueError:
        return text


def _convert(key: str, default: Any, value: Any) -> Any:
    """Check ``value`` against the default's type (ints do for floats), then the key's check."""
    kind = type(default)
    if kind is float and type(value) is int:
        value = float(value)
    if kind is tuple:
        ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
    else:  # type() is, not isinstance(): a TOML true must not pass for an integer
        ok = type(value) is kind and (kind is not float or math.isfinite(value))
    if not ok:
        raise ConfigError(key, f"must be {_KINDS.get(kind, 'a list of strings')}, got {value!r}")
    value = tuple(value) if kind is tuple else value
    if key in CHECKS and (problem := CHECKS[key](key, value)):
        raise ConfigError(key, problem)
    return value


def _defaults() -> dict[str, dict[str, Any]]:
    return {
        name: {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}
        for name, cls in SECTIONS.items()
    }


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read the configuration: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from exc


def _gather(raw: Mapping[str, Any], env: Mapping[str, str], problems: list[ConfigError]) -> Any:
    """Values per section: the defaults, then the file, then the environment; problems collected."""
    values = _defaults()
    given: list[tuple[str, str, Any]] = []  # (section, key, file value or env text)
    for section, table in raw.items():
        if section not in SECTIONS or not isinstance(table, dict):
            problems.append(ConfigError(section, "unknown section (or not a [table])"))
            continue
        given += [(section, key, value) for key, value in table.items()]
    for name, text in env.items():
        if name.startswith(ENV_PREFIX) and name != ENV_CONFIG:
            rest = name[len(ENV_PREFIX) :].lower()
            # The longest section that prefixes it: "hosted_cache" has an underscore itself.
            section = max((s for s in values if rest.startswith(f"{s}_")), key=len, default="")
            key = rest[len(section) + 1 :]
            if section not in values:
                continue  # not a key override (e.g. PEERDISTD_SOCKET, read by the client)
            if key not in values[section]:
                problems.append(ConfigError(name, "unknown configuration key in the environment"))
                continue
            given.append((section, key, _parse_env(type(values[section][key]), text)))
    for section, key, value in given:
        if key not in values[section]:
            problems.append(ConfigError(f"{section}.{key}", "unknown key"))
            continue
        try:
            values[section][key] = _convert(f"{section}.{key}", values[section][key], value)
        except ConfigError as exc:
            problems.append(exc)
    return values


def _build(values: dict[str, dict[str, Any]], uid: int | None, env: Mapping[str, str]) -> Config:
    sections = {name: SECTIONS[name](**values[name]) for name in SECTIONS}
    daemon: DaemonConfig = sections["daemon"]
    base = default_paths(uid, env)
    state = Path(daemon.state_dir) if daemon.state_dir else base.state_dir
    paths = Paths(
        state_dir=state,
        cache_dir=Path(daemon.cache_dir) if daemon.cache_dir else base.cache_dir,
        socket=Path(daemon.socket) if daemon.socket else base.socket,
        secret_file=Path(values["content"]["secret_file"] or state / "server-secret"),
    )
    return Config(**sections, paths=paths)


def default_config_path(uid: int | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Where the config file is looked for when none is named (it may not exist)."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG])
    # systemd's ConfigurationDirectory= exports CONFIGURATION_DIRECTORY (systemd.exec(5)).
    base = systemd_dir(env, "CONFIGURATION_DIRECTORY")
    if base is None:
        uid = os.geteuid() if uid is None else uid
        home = Path(env.get("HOME") or home_of(uid))
        base = Path("/etc") if uid == 0 else xdg_dir(env, "XDG_CONFIG_HOME") or home / ".config"
        base = base / "peerdistd"
    return base / "peerdistd.toml"


def _default_file_exists(path: Path) -> bool:
    """Whether the default config file exists; a folder on its way we may not search is an
    error (there may be a file we cannot see), said as one, not a traceback."""
    try:
        return path.exists()
    except OSError as exc:
        raise ConfigError(
            str(path),
            f"cannot look for the configuration file: {exc.strerror}; make its folders "
            "readable by this user, or name a file with --config",
        ) from exc


def _load(
    path: Path | None, env: Mapping[str, str] | None, uid: int | None
) -> tuple[Config | None, list[ConfigError]]:
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    problems: list[ConfigError] = []
    try:
        if path is None:
            # A default location that does not exist is fine; a named file must exist.
            path = default_config_path(uid, env)
            if not env.get(ENV_CONFIG) and not _default_file_exists(path):
                path = None
        if path is not None:
            raw = _read_file(path)
        config = _build(_gather(raw, env, problems), uid, env)
        _cross_checks(config)  # keys that failed hold their defaults here
    except ConfigError as exc:
        problems.append(exc)
        return None, problems
    return (None if problems else config), problems


def load_config(
    path: Path | None = None, env: Mapping[str, str] | None = None, *, uid: int | None = None
) -> Config:
    """Load the configuration; raise :class:`ConfigError` for the first problem found.

    ``path`` None means ``$PEERDISTD_CONFIG`` or the default location, if that file exists.
    """
    config, problems = _load(path, env, uid)
    if config is None:
        raise problems[0]
    return config


def check_config(path: Path | None, env: Mapping[str, str] | None = None) -> list[str]:
    """Every problem of the configuration as ``"key: message"``; [] if it is fine."""
    return [str(problem) for problem in _load(path, env, None)[1]]


def diff_for_reload(old: Config, new: Config) -> tuple[list[str], list[str]]:
    """Changed keys as (applied at run time, needing a restart), each sorted."""
    changed = sorted(
        f"{section}.{f.name}"
        for section in SECTIONS
        for f in dataclasses.fields(getattr(old, section))
        if getattr(getattr(old, section), f.name) != getattr(getattr(new, section), f.name)
    )
    return [k for k in changed if k in RELOADABLE], [k for k in changed if k not in RELOADABLE]
