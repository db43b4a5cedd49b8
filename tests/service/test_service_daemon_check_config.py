"""``peerdistd check-config`` as an admin runs it (the installed console script): exit 0 and
"configuration OK" for a good file, exit 1 and one ``peerdistd: KEY: message`` line per problem
for a bad one; ``peerdistd serve`` refuses the same file with exit 2 before binding anything."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli.clitools import as_nobody

REPO = Path(__file__).resolve().parents[2]
PEERDISTD = Path(sys.executable).parent / "peerdistd"
SHIPPED = REPO / "config" / "peerdistd.toml"


def admin_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without overrides, the default config location in tmp_path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PEERDISTD_")}
    env |= {"CONFIGURATION_DIRECTORY": str(tmp_path / "etc"), "HOME": str(tmp_path)}
    return env | extra


def check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PEERDISTD), "check-config", *args],
        env=admin_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def result(done: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    return done.returncode, done.stdout, done.stderr


def write(tmp_path: Path, text: str, name: str = "peerdistd.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text",
    [
        SHIPPED.read_text(),  # every key, commented
        "",
        "[daemon]\nlog_format = 'json'\n[cache]\nlimit_bytes = 10_000_000\n"
        "[peers]\nlisten = '[::]:80'\nadvertise = '192.0.2.7:80'\ninterfaces = ['192.0.2.7']\n",
    ],
    ids=["shipped", "empty", "some-keys"],
)
def test_good_files_pass(tmp_path: Path, text: str) -> None:
    done = check(tmp_path, "--config", str(write(tmp_path, text)))
    assert result(done) == (0, "configuration OK\n", "")


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        (
            "[cache]\nlimit_percent = 150\n",
            ["cache.limit_percent: must be between 0 and 100, got 150"],
        ),
        (
            "[metrics]\nlisten = '192.0.2.1:9595'\n",
            [
                "metrics.listen: '192.0.2.1:9595' is not a loopback address; "
                "set metrics.allow_remote = true to allow it"
            ],
        ),
        (
            "[peer]\nlisten = '0.0.0.0:80'\n"
            "[daemon]\nlog_level = 'loud'\nsocket_mode = '999'\nshutdown_timeout = 'soon'\n"
            "[content]\nversion = 3\n[peers]\nlisten_port = 80\n",
            [
                "peer: unknown section (or not a [table])",
                "daemon.log_level: must be one of debug, info, warning, error, critical, "
                "got 'loud'",
                "daemon.socket_mode: must be an octal file mode like 0660, got '999'",
                "daemon.shutdown_timeout: must be a number, got 'soon'",
                "content.version: must be one of 1, 2, got 3",
                "peers.listen_port: unknown key",
            ],
        ),
    ],
    ids=["range", "cross-check", "every-problem"],
)
def test_bad_files_name_each_key(tmp_path: Path, text: str, problems: list[str]) -> None:
    done = check(tmp_path, "--config", str(write(tmp_path, text)))
    assert result(done) == (1, "", "".join(f"peerdistd: {p}\n" for p in problems))


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    done = check(tmp_path, "--config", str(missing))
    assert result(done) == (
        1,
        "",
        f"peerdistd: {missing}: cannot read the configuration: No such file or directory\n",
    )
    broken = write(tmp_path, "[daemon\nenabled = true\n")
    done = check(tmp_path, "--config", str(broken))
    assert (done.returncode, done.stdout) == (1, "")
    assert done.stderr.startswith(f"peerdistd: {broken}: not valid TOML: ")
    assert done.stderr.count("\n") == 1


def test_environment_overrides_are_checked_too(tmp_path: Path) -> None:
    path = write(tmp_path, "[peers]\nupload_limit = 8\n")
    done = check(
        tmp_path,
        "--config",
        str(path),
        PEERDISTD_PEERS_UPLOAD_LIMIT="0",
        PEERDISTD_PEERS_BOGUS="1",
    )
    assert result(done) == (
        1,
        "",
        "peerdistd: PEERDISTD_PEERS_BOGUS: unknown configuration key in the environment\n"
        "peerdistd: peers.upload_limit: must be at least 1, got 0\n",
    )


def test_without_config_the_default_location_is_checked(tmp_path: Path) -> None:
    # No file at the default location: the defaults are fine.
    assert result(check(tmp_path)) == (0, "configuration OK\n", "")
    # systemd's ConfigurationDirectory= names where the file is (systemd.exec(5)).
    (tmp_path / "etc").mkdir()
    write(tmp_path / "etc", "[cache]\nlimit_percent = -1\n")
    assert result(check(tmp_path)) == (
        1,
        "",
        "peerdistd: cache.limit_percent: must be between 0 and 100, got -1\n",
    )
    # $PEERDISTD_CONFIG wins, and must exist.
    good = write(tmp_path, "[cache]\nlimit_percent = 7\n", "other.toml")
    assert result(check(tmp_path, PEERDISTD_CONFIG=str(good))) == (0, "configuration OK\n", "")
    assert check(tmp_path, PEERDISTD_CONFIG=str(tmp_path / "nope.toml")).returncode == 1


def test_serve_refuses_what_check_config_refuses(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nlimit_percent = 150\n[peers]\nbogus = 1\n")
    checked = check(tmp_path, "--config", str(path))
    assert checked.returncode == 1
    run = tmp_path / "run"
    done = subprocess.run(
        [str(PEERDISTD), "serve", "--config", str(path), "--no-peers", "--metrics", ""],
        env=admin_env(tmp_path, RUNTIME_DIRECTORY=str(run), STATE_DIRECTORY=str(tmp_path / "s")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    first = checked.stderr.splitlines()[0].removeprefix("peerdistd: ")
    assert result(done) == (2, "", f"peerdistd: configuration error: {first}\n")
    assert not run.exists() and not (tmp_path / "s").exists()  # nothing made, nothing bound


def test_a_missing_socket_group_is_refused_by_both(tmp_path: Path) -> None:
    path = write(tmp_path, "[daemon]\nsocket_group = 'nosuchgroup'\n")
    problem = (
        "daemon.socket_group: no group 'nosuchgroup' on this host; create it "
        "(groupadd nosuchgroup) or leave it empty"
    )
    assert result(check(tmp_path, "--config", str(path))) == (1, "", f"peerdistd: {problem}\n")
    run = tmp_path / "run"
    done = subprocess.run(
        [str(PEERDISTD), "serve", "--config", str(path), "--no-peers", "--metrics", ""],
        env=admin_env(tmp_path, RUNTIME_DIRECTORY=str(run), STATE_DIRECTORY=str(tmp_path / "s")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result(done) == (2, "", f"peerdistd: configuration error: {problem}\n")
    assert not run.exists()


@pytest.mark.parametrize("key", ["state_dir", "cache_dir"])
def test_a_directory_that_cannot_be_made_names_its_setting(tmp_path: Path, key: str) -> None:
    (tmp_path / "file").write_text("not a folder")
    dirs = {"state_dir": tmp_path / "state", "cache_dir": tmp_path / "cache"}
    dirs[key] = tmp_path / "file" / "sub"
    done = subprocess.run(
        [
            *(str(PEERDISTD), "serve", "--no-peers", "--metrics", "", "--log-format", "text"),
            *("--socket", str(tmp_path / "api.sock")),
            *("--state-dir", str(dirs["state_dir"]), "--cache-dir", str(dirs["cache_dir"])),
        ],
        env=admin_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert (
        f"cannot start: daemon.{key}: cannot create {dirs[key]}: Not a directory; "
        f"set daemon.{key} to a directory of your own" in done.stderr
    )
    assert "daemon.socket" not in done.stderr


def test_an_unreadable_config_folder_is_one_line_not_a_traceback() -> None:
    from peerdistd.daemon import main  # imported before the fork: nobody may not read it

    home = Path(tempfile.mkdtemp(prefix="pdhome"))
    try:
        home.chmod(0o755)
        (home / ".config").mkdir(mode=0o000)

        def run(*argv: str) -> Callable[[], int]:
            def child() -> int:
                for name in list(os.environ):
                    if name.startswith(("PEERDISTD_", "XDG_")) or name.endswith("DIRECTORY"):
                        del os.environ[name]
                os.environ["HOME"] = str(home)
                return main(list(argv))

            return child

        problem = (
            f"{home}/.config/peerdistd/peerdistd.toml: cannot look for the configuration "
            "file: Permission denied; make its folders readable by this user, or name a file "
            "with --config"
        )
        assert as_nobody(run("check-config")) == (1, f"peerdistd: {problem}\n")
        served = as_nobody(run("serve", "--no-peers", "--metrics", ""))
        assert served == (2, f"peerdistd: configuration error: {problem}\n")
    finally:
        shutil.rmtree(home)


def test_a_file_the_daemon_cannot_write_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "node-id.tmp").mkdir(parents=True)  # where the node id is written first
    done = subprocess.run(
        [
            *(str(PEERDISTD), "serve", "--no-peers", "--metrics", "", "--log-format", "text"),
            *("--socket", str(tmp_path / "api.sock"), "--state-dir", str(state)),
            *("--cache-dir", str(tmp_path / "cache")),
        ],
        env=admin_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().endswith(
        f"cannot start: {state}/node-id.tmp: Is a directory; fix that path or choose another"
    )
    assert not (tmp_path / "api.sock").exists()


def test_a_socket_path_too_long_is_refused_by_both(tmp_path: Path) -> None:
    long = str(tmp_path / ("x" * 100) / "api.sock")  # never created: refused first
    path = write(tmp_path, f"[daemon]\nsocket = '{long}'\n")
    problem = (
        f"daemon.socket: {long} is longer than the 107 bytes a Unix socket path may have; "
        "choose a shorter path"
    )
    assert result(check(tmp_path, "--config", str(path))) == (1, "", f"peerdistd: {problem}\n")
    done = subprocess.run(
        [str(PEERDISTD), "serve", "--config", str(path), "--no-peers", "--metrics", ""],
        env=admin_env(tmp_path, STATE_DIRECTORY=str(tmp_path / "s")),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result(done) == (2, "", f"peerdistd: configuration error: {problem}\n")
