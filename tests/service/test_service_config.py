"""peerdistd.config: defaults, the shipped file, environment overrides, errors, reload diffs."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from pathlib import Path

import pytest

from peerdistd.config import (
    RELOADABLE,
    SECTIONS,
    CacheConfig,
    Config,
    DaemonConfig,
    check_config,
    default_config_path,
    diff_for_reload,
    ensure_private_dir,
    load_config,
)
from peerdistd.config_checks import parse_endpoint
from peerdistd.errors import ConfigError
from peerdistd.paths import Paths, default_paths

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "config" / "peerdistd.toml"
USER_ENV = {"HOME": "/home/ann"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "peerdistd.toml"
    path.write_text(text)
    return path


def test_shipped_file_is_exactly_the_embedded_defaults() -> None:
    assert load_config(SHIPPED, env=USER_ENV, uid=1000) == load_config(None, USER_ENV, uid=1000)


def test_shipped_file_lists_every_field_of_every_section() -> None:
    text = tomllib.loads(SHIPPED.read_text())
    expected = {name: {f.name for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()}
    assert {name: set(table) for name, table in text.items()} == expected


def test_every_key_in_the_shipped_file_is_commented() -> None:
    lines = SHIPPED.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.match(r"^\w+ = ", line):
            assert lines[number - 1].startswith("#") or re.match(r"^\w+ = ", lines[number - 1])


def test_defaults_match_the_brief() -> None:
    config = load_config(None, env=USER_ENV, uid=1000)
    assert config.cache.limit_percent == 5.0
    assert config.daemon.handle_idle_timeout == 600
    assert config.peers.listen == "0.0.0.0:80"
    assert config.peers.discovery_port == 3702
    assert config.peers.interfaces == ()
    assert config.metrics.listen == "127.0.0.1:9595"
    assert config.daemon.log_format == "text"


def test_root_paths() -> None:
    assert default_paths(uid=0, env={}) == Paths(
        Path("/var/lib/peerdistd"),
        Path("/var/cache/peerdistd"),
        Path("/run/peerdistd/api.sock"),
        Path("/var/lib/peerdistd/server-secret"),
    )


def test_user_paths_follow_xdg_and_ignore_relative_values() -> None:
    env = {
        "HOME": "/home/ann",
        "XDG_DATA_HOME": "/d",
        "XDG_CACHE_HOME": "relative/is/ignored",
        "XDG_RUNTIME_DIR": "/run/user/1000",
    }
    paths = default_paths(uid=1000, env=env)
    assert paths.state_dir == Path("/d/peerdistd")
    assert paths.cache_dir == Path("/home/ann/.cache/peerdistd")
    assert paths.socket == Path("/run/user/1000/peerdistd/api.sock")
    assert default_paths(uid=1000, env=USER_ENV).socket == Path("/tmp/peerdistd-1000/api.sock")
    assert default_paths(uid=1000, env=USER_ENV).state_dir == Path(
        "/home/ann/.local/share/peerdistd"
    )


def test_systemd_directories_win() -> None:
    env = {
        "STATE_DIRECTORY": "/var/lib/private/peerdistd:/other",
        "CACHE_DIRECTORY": "/var/cache/private/peerdistd",
        "RUNTIME_DIRECTORY": "/run/peerdistd",
        "XDG_RUNTIME_DIR": "/run/user/7",
        "HOME": "/nonexistent",
    }
    paths = default_paths(uid=61234, env=env)
    assert paths == Paths(
        Path("/var/lib/private/peerdistd"),
        Path("/var/cache/private/peerdistd"),
        Path("/run/peerdistd/api.sock"),
        Path("/var/lib/private/peerdistd/server-secret"),
    )


def test_explicit_keys_override_every_default_path(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[daemon]\nstate_dir = "/s"\ncache_dir = "/c"\nsocket = "/x/api.sock"\n'
        '[content]\nsecret_file = "/k/secret"\n',
    )
    config = load_config(path, env={"STATE_DIRECTORY": "/sd"}, uid=0)
    assert config.paths == Paths(Path("/s"), Path("/c"), Path("/x/api.sock"), Path("/k/secret"))
    assert load_config(None, env={"PEERDISTD_DAEMON_STATE_DIR": "/e"}, uid=0).paths.secret_file == (
        Path("/e/server-secret")
    )


def test_environment_overrides_file_and_parses_each_type(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nlimit_percent = 20\n[peers]\nzeroconf = true\n")
    env = {
        **USER_ENV,
        "PEERDISTD_CACHE_LIMIT_PERCENT": "10",
        "PEERDISTD_PEERS_ZEROCONF": "off",
        "PEERDISTD_PEERS_UPLOAD_LIMIT": " 128 ",
        "PEERDISTD_PEERS_INTERFACES": "192.0.2.1, ::1,",
        "PEERDISTD_PEERS_MAX_INFLIGHT_PER_PEER": "4",
        "PEERDISTD_CONFIG": "/is/not/a/key",
        "OTHER": "ignored",
    }
    config = load_config(path, env=env, uid=1000)
    assert config.cache.limit_percent == 10.0
    assert config.peers.zeroconf is False
    assert config.peers.upload_limit == 128
    assert config.peers.interfaces == ("192.0.2.1", "::1")
    assert config.peers.max_inflight_per_peer == 4


def test_file_ints_are_accepted_for_floats(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[cache]\nlimit_percent = 7\n"), env=USER_ENV, uid=1)
    assert config.cache == CacheConfig(limit_bytes=0, limit_percent=7.0)
    assert type(config.cache.limit_percent) is float


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[cache]\nlimit_percent = 150", "cache.limit_percent: must be between 0 and 100, got 150"),
        ("[cache]\nlimit_bytes = -1", "cache.limit_bytes: must be at least 0, got -1"),
        (
            "[cache]\nscrub_bytes_per_second = -1",
            "cache.scrub_bytes_per_second: must be at least 0, got -1",
        ),
        (
            "[cache]\nscrub_bytes_per_second = 1.5",
            "cache.scrub_bytes_per_second: must be an integer, got 1.5",
        ),
        ("[cache]\nsize = 1", "cache.size: unknown key"),
        ("[caches]\nlimit_bytes = 1", "caches: unknown section (or not a [table])"),
        ("[daemon]\nenabled = 1", "daemon.enabled: must be a boolean, got 1"),
        ("[peers]\nupload_limit = true", "peers.upload_limit: must be an integer, got True"),
        ("[peers]\nupload_limit = 0", "peers.upload_limit: must be at least 1, got 0"),
        ("[peers]\ninterfaces = [1]", "peers.interfaces: must be a list of strings, got [1]"),
        ("[cache]\nlimit_percent = nan", "cache.limit_percent: must be a number, got nan"),
        ("[daemon]\nlog_level = 'loud'", "daemon.log_level: must be one of debug, info, warning"),
        ("[daemon]\nsocket_mode = '0999'", "daemon.socket_mode: must be an octal file mode"),
        ("[daemon]\nsocket_mode = '1777'", "daemon.socket_mode: must be an octal file mode"),
        ("[daemon]\napi_tcp = '192.0.2.1:1'", "daemon.api_tcp: must be a loopback address"),
        ("[daemon]\napi_tcp = 'localhost:1'", "daemon.api_tcp: must be an IP address and port"),
        ("[content]\nversion = 3", "content.version: must be one of 1, 2, got 3"),
        ("[peers]\nlisten = '0.0.0.0'", "peers.listen: must be an IP address and port"),
        ("[peers]\nlisten = '0.0.0.0:70000'", "peers.listen: must be an IP address and port"),
        ("[peers]\nadvertise = '0.0.0.0:80'", "peers.advertise: must be an address peers can"),
        ("[peers]\nadvertise = '192.0.2.1:0'", "peers.advertise: must be an IP address and port"),
        ("[peers]\nmax_inflight = 4", "peers.max_inflight_per_peer: must not exceed peers.max"),
        ("[metrics]\nlisten = '0.0.0.0:9595'", "metrics.listen: '0.0.0.0:9595' is not a loopback"),
        ("[daemon]\nheld_limit_bytes = -1", "daemon.held_limit_bytes: must be at least 0, got -1"),
        ("daemon = 1", "daemon: unknown section (or not a [table])"),
    ],
)
def test_invalid_values_name_their_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, toml), env=USER_ENV, uid=1000)
    assert str(caught.value).startswith(message)
    assert caught.value.key == message.split(":", maxsplit=1)[0]


def test_remote_metrics_allowed_when_asked(tmp_path: Path) -> None:
    path = write(tmp_path, "[metrics]\nlisten = '[::]:9595'\nallow_remote = true\n")
    assert load_config(path, env=USER_ENV, uid=1000).metrics.listen == "[::]:9595"


def test_bad_environment_values_name_their_key() -> None:
    with pytest.raises(ConfigError, match=r"^daemon\.enabled: must be a boolean, got 'maybe'$"):
        load_config(None, env={"PEERDISTD_DAEMON_ENABLED": "maybe"}, uid=0)
    with pytest.raises(ConfigError, match=r"^peers\.upload_limit: must be an integer, got '1e3'"):
        load_config(None, env={"PEERDISTD_PEERS_UPLOAD_LIMIT": "1e3"}, uid=0)
    with pytest.raises(ConfigError, match=r"^PEERDISTD_PEERS_UPLOAD: unknown configuration key"):
        load_config(None, env={"PEERDISTD_PEERS_UPLOAD": "1"}, uid=0)
    # A variable that names no section is not a key override (the client reads this one).
    assert load_config(None, env={"PEERDISTD_SOCKET": "/x"}, uid=0) == load_config(None, {}, uid=0)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_config(tmp_path / "missing.toml", env={}, uid=0)
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        load_config(write(tmp_path, "[daemon\n"), env={}, uid=0)
    assert caught.value.key == str(tmp_path / "peerdistd.toml")


def test_check_config_lists_every_problem(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nlimit_percent = 150\nbogus = 1\n[peers]\nlisten = 'x'\n")
    assert check_config(path, env={"PEERDISTD_DAEMON_LOG_FORMAT": "xml"}) == [
        "cache.limit_percent: must be between 0 and 100, got 150",
        "cache.bogus: unknown key",
        "peers.listen: must be an IP address and port like 127.0.0.1:8080, got 'x'",
        "daemon.log_format: must be one of text, json, got 'xml'",
    ]
    assert check_config(SHIPPED, env={}) == []


def test_default_config_path_and_named_missing_file(tmp_path: Path) -> None:
    assert default_config_path(uid=0, env={}) == Path("/etc/peerdistd/peerdistd.toml")
    assert default_config_path(uid=5, env={"XDG_CONFIG_HOME": "/c"}) == Path(
        "/c/peerdistd/peerdistd.toml"
    )
    assert default_config_path(env={"CONFIGURATION_DIRECTORY": "/etc/pd"}) == Path(
        "/etc/pd/peerdistd.toml"
    )
    # A default location that does not exist is fine; $PEERDISTD_CONFIG must exist.
    home = {"HOME": str(tmp_path)}
    assert load_config(None, env=home, uid=1000).daemon == DaemonConfig()
    (tmp_path / ".config" / "peerdistd").mkdir(parents=True)
    (tmp_path / ".config" / "peerdistd" / "peerdistd.toml").write_text("[daemon]\nenabled=false")
    assert load_config(None, env=home, uid=1000).daemon.enabled is False
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(None, env={"PEERDISTD_CONFIG": str(tmp_path / "nope.toml")}, uid=0)


def test_parse_endpoint() -> None:
    assert parse_endpoint("k", "127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_endpoint("k", "[::1]:0") == ("::1", 0)
    with pytest.raises(ConfigError, match=r"^k: "):
        parse_endpoint("k", "[::1]:0", allow_port_zero=False)
    with pytest.raises(ConfigError):
        parse_endpoint("k", "::1:80x")


def test_reload_diff_splits_reloadable_keys() -> None:
    old = Config()
    new = dataclasses.replace(
        old,
        daemon=dataclasses.replace(old.daemon, log_level="debug", socket_mode="0600"),
        peers=dataclasses.replace(old.peers, upload_limit=8, listen="0.0.0.0:8080"),
    )
    assert diff_for_reload(old, new) == (
        ["daemon.log_level", "peers.upload_limit"],
        ["daemon.socket_mode", "peers.listen"],
    )
    assert diff_for_reload(old, old) == ([], [])


def test_reloadable_keys_exist() -> None:
    every = {f"{name}.{f.name}" for name, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert every >= RELOADABLE
    # + cache.scrub_bytes_per_second, hosted_cache.upload_limit, peers.failures_to_ban,
    # peers.min_transfer_rate
    assert len(RELOADABLE) == 13


def test_config_values_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().cache.limit_bytes = 1  # type: ignore[misc]


def test_ensure_private_dir(tmp_path: Path) -> None:
    target = tmp_path / "run" / "peerdistd"
    ensure_private_dir(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    target.chmod(0o755)
    ensure_private_dir(target)
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    # Our own symlink to our own directory is followed (DynamicUser's StateDirectory is one).
    link = tmp_path / "link"
    link.symlink_to(target)
    ensure_private_dir(link)
    plain = tmp_path / "file"
    plain.write_text("")
    with pytest.raises(
        ConfigError,
        match=r"^daemon\.socket: cannot create .*/file: File exists; set daemon\.socket to a "
        r"path in a directory of your own$",
    ):
        ensure_private_dir(plain)
    # Named after the setting that chose the directory, the fix included.
    with pytest.raises(
        ConfigError, match=r"^daemon\.state_dir: cannot create .*; set daemon\.state_dir to a dir"
    ):
        ensure_private_dir(plain, key="daemon.state_dir")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create another user's files")
def test_ensure_private_dir_refuses_another_users_dir_or_link(tmp_path: Path) -> None:
    squatted = tmp_path / "squat"
    squatted.mkdir(mode=0o700)
    os.chown(squatted, 4242, 4242)
    with pytest.raises(ConfigError, match=r"belongs to uid 4242, not to us .*; chown it to uid"):
        ensure_private_dir(squatted)
    mine = tmp_path / "mine"
    mine.mkdir()
    trap = tmp_path / "trap"
    trap.symlink_to(mine)
    os.lchown(trap, 4242, 4242)
    with pytest.raises(ConfigError, match="belongs to uid 4242"):
        ensure_private_dir(trap)


def test_hosted_cache_keys_from_the_environment() -> None:
    # The section's own name has an underscore: PEERDISTD_HOSTED_CACHE_SERVER still reaches it.
    from peerdistd.config import load_config

    env = {"PEERDISTD_HOSTED_CACHE_SERVER": "hc.branch:8443", "PEERDISTD_HOSTED_CACHE_ENABLED": "1"}
    cfg = load_config(None, env, uid=0)
    assert (cfg.hosted_cache.server, cfg.hosted_cache.enabled) == ("hc.branch:8443", True)
    assert not cfg.peers.allow_plaintext and cfg.hosted_cache.listen == "0.0.0.0:443"


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("dns-sd", True),
        ("hc.branch1.example", True),
        ("hc:8443", True),
        ("10.0.0.5", True),
        ("[fd00::5]:443", True),
        ("hc:", False),
        ("[fd00::5", False),
        ("a b", False),
        ("hc:70000", False),
    ],
)
def test_hosted_cache_server_values(value: str, ok: bool) -> None:
    from peerdistd.config import load_config
    from peerdistd.errors import ConfigError

    env = {"PEERDISTD_HOSTED_CACHE_SERVER": value}
    if ok:
        assert load_config(None, env, uid=0).hosted_cache.server == value
    else:
        with pytest.raises(ConfigError, match=r"hosted_cache\.server"):
            load_config(None, env, uid=0)
