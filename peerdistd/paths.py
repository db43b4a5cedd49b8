"""Where peerdistd's files live by default: systemd's directories, else root's or the XDG ones.

Below the configuration and the client SDK alike: the SDK finds the daemon's socket with it
without importing the daemon's configuration.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Paths:
    """Where the daemon keeps its files, after config keys, systemd and XDG are applied."""

    state_dir: Path
    cache_dir: Path
    socket: Path
    secret_file: Path


def default_paths(uid: int | None = None, env: Mapping[str, str] | None = None) -> Paths:
    """The default paths for ``uid``: systemd's directories, else root's or the XDG ones."""
    env = os.environ if env is None else env
    uid = os.geteuid() if uid is None else uid
    if uid == 0:
        state, cache = Path("/var/lib/peerdistd"), Path("/var/cache/peerdistd")
        runtime = Path("/run/peerdistd")
    else:
        home = Path(env.get("HOME") or home_of(uid))
        state = (xdg_dir(env, "XDG_DATA_HOME") or home / ".local" / "share") / "peerdistd"
        cache = (xdg_dir(env, "XDG_CACHE_HOME") or home / ".cache") / "peerdistd"
        xdg_runtime = xdg_dir(env, "XDG_RUNTIME_DIR")
        # Without XDG_RUNTIME_DIR: a per-user /tmp dir; ensure_private_dir() creates it 0700
        # and refuses one that another user made first.
        runtime = xdg_runtime / "peerdistd" if xdg_runtime else Path(f"/tmp/peerdistd-{uid}")  # noqa: S108
    # systemd's StateDirectory= etc. export these (systemd.exec(5)); the first entry is ours.
    state = systemd_dir(env, "STATE_DIRECTORY") or state
    cache = systemd_dir(env, "CACHE_DIRECTORY") or cache
    runtime = systemd_dir(env, "RUNTIME_DIRECTORY") or runtime
    return Paths(state, cache, runtime / "api.sock", state / "server-secret")


def home_of(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_dir
    except KeyError:
        return "/"


def xdg_dir(env: Mapping[str, str], name: str) -> Path | None:
    # The XDG base directory spec says relative values are invalid and must be ignored.
    value = env.get(name, "")
    return Path(value) if value.startswith("/") else None


def systemd_dir(env: Mapping[str, str], name: str) -> Path | None:
    first = env.get(name, "").split(":")[0]
    return Path(first) if first.startswith("/") else None
