"""nginx as lancache runs it: the caching box the branch benchmark compares peerdistd with.

Debian's nginx package is found on PATH or installed here (``apt-get install -y nginx`` as
root, after ``apt-get update`` when the package lists are stale); when neither works the
benchmark's nginx column says why instead. The configuration is lancache's core: ``slice 1m``
so that a client's request becomes 1 MiB range requests to the origin, one cache entry per
slice (``proxy_cache_key $uri$slice_range``), and ``proxy_cache_lock`` so that of the clients
missing one slice at the same time only the first goes to the origin and the rest wait for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

INSTALL_TIMEOUT = 600.0
PACKAGE = "nginx"  # Debian 12: the binary; nginx-light/nginx-core are module sets on top of it

CONFIG = """\
user root;
worker_processes 2;
pid {prefix}/nginx.pid;
events {{ worker_connections 4096; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy_temp;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    sendfile on;
    proxy_cache_path {prefix}/cache levels=2:2 keys_zone=branch:64m inactive=1d
                     max_size=64g use_temp_path=off;
    server {{
        listen [{address}]:{port};
        location = /ready {{ return 204; }}
        location / {{
            # lancache's monolithic configuration, the parts that decide what the WAN carries.
            slice 1m;
            proxy_cache branch;
            proxy_cache_key $uri$slice_range;
            proxy_set_header Range $slice_range;
            proxy_cache_valid 200 206 1d;
            proxy_cache_lock on;
            proxy_cache_lock_age 2m;
            proxy_cache_lock_timeout 1h;
            proxy_ignore_headers Expires Cache-Control;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_pass {upstream};
        }}
    }}
}}
"""


def _binary() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def _apt(*args: str) -> str | None:
    """Run apt-get; None when it worked, else the last line it printed."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(
            ["apt-get", *args],
            check=False,
            capture_output=True,
            text=True,
            env=env,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"apt-get {args[0]} took over {INSTALL_TIMEOUT:.0f} s"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[-1] if lines else f"apt-get {args[0]} exited {done.returncode}"


def find_or_install(install: bool) -> tuple[str | None, str]:
    """nginx's path with the slice module, or None and why it is unavailable (said plainly)."""
    path = _binary()
    if path is None:
        if not install:
            return None, "nginx is not installed (--no-install given)"
        if os.geteuid() != 0:
            return None, "nginx is not installed and installing it needs root"
        if shutil.which("apt-get") is None:
            return None, "nginx is not installed and there is no apt-get to install it"
        print(f"   installing Debian's {PACKAGE} (apt-get install -y {PACKAGE})", flush=True)
        why = _apt("install", "-y", "--no-install-recommends", PACKAGE)
        if why is not None:  # stale or missing package lists: update once, then retry
            why = _apt("update") or _apt("install", "-y", "--no-install-recommends", PACKAGE)
        path = _binary()
        if why is not None or path is None:
            return None, f"apt-get install {PACKAGE} failed: {why}"
    version = subprocess.run([path, "-V"], check=False, capture_output=True, text=True).stderr
    if "--with-http_slice_module" not in version:
        return None, f"{path} was built without the slice module (lancache needs it)"
    return path, version.splitlines()[0].removeprefix("nginx version: ")


def write_config(prefix: Path, address: str, port: int, upstream: str) -> Path:
    """The configuration for one run under ``prefix`` (a fresh, empty cache every time)."""
    prefix.mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(CONFIG.format(prefix=prefix, address=address, port=port, upstream=upstream))
    return conf


def command(binary: str, prefix: Path, conf: Path) -> list[str]:
    """nginx in the foreground, logging under ``prefix`` (never Debian's /var/log/nginx)."""
    return [binary, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log"),
            "-g", "daemon off;"]  # fmt: skip
