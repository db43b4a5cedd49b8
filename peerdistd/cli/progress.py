"""How the remote subcommands show things to a person: rich tables and the fetch progress bar."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Iterator

from rich.console import Console, Group, RenderableType
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from peerdistd.api.client import CacheUsage, Peer, Status
from peerdistd.cli.fetching import ProgressCallback

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in _UNITS:
        if abs(n) < 1024 or unit == _UNITS[-1]:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def hit_ratios(status: Status) -> tuple[float | None, float | None]:
    """BranchCache's hit ratio by bytes: (branch, local) = ((cache + peers) / all, cache / all)
    of the bytes applications got; None before the first byte. The daemon reports them; this
    computes them from the counters for a daemon that does not."""
    if "branch" in status.hit_ratio:
        return status.hit_ratio["branch"], status.hit_ratio.get("local")
    cache, peers = status.counter("bytes_from_cache"), status.counter("bytes_from_peers")
    total = cache + peers + status.counter("bytes_from_origin")
    return ((cache + peers) / total, cache / total) if total else (None, None)


def _percent(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1%}"


def _key_values(title: str, rows: Iterable[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    for key, value in rows:
        table.add_row(key, value)
    return table


def cache_table(cache: CacheUsage) -> Table:
    share = f" ({cache.bytes_used / cache.limit_bytes:.0%})" if cache.limit_bytes else ""
    return _key_values(
        "Cache",
        [
            ("used", f"{human_bytes(cache.bytes_used)} of {human_bytes(cache.limit_bytes)}{share}"),
            ("segments", str(cache.segments)),
            ("blocks", str(cache.blocks)),
            ("evictions", str(cache.evictions)),
        ],
    )


def peers_table(peers: Iterable[Peer], now: float | None = None) -> Table:
    now = time.time() if now is None else now
    table = Table(title="Peers", title_justify="left")
    # A node id is 32 hex digits: whole on one line, never folded (the address may wrap).
    table.add_column("node id", no_wrap=True, min_width=32)
    table.add_column("address", no_wrap=True)
    table.add_column("last seen")
    table.add_column("source", no_wrap=True)
    for column in ("from", "to", "bad"):
        table.add_column(column, justify="right")
    for peer in peers:
        ago = f"{max(0.0, now - peer.last_seen):.0f} s ago" if peer.last_seen else "-"
        table.add_row(
            peer.node_id or "-",
            peer.address + (" (banned)" if peer.banned else ""),
            ago,
            peer.source or "",
            human_bytes(peer.bytes_from),
            human_bytes(peer.bytes_to),
            str(peer.bad_blocks),
        )
    return table


def status_view(status: Status) -> RenderableType:
    """The human summary of ``peerdist status``."""
    branch, local = hit_ratios(status)
    service = _key_values(
        "peerdistd",
        [
            (
                "state",
                f"{status.status} ({status.unavailable_reason})"
                if status.unavailable_reason
                else status.status,
            ),
            ("version", status.version),
            ("node id", status.node_id),
            ("uptime", f"{status.uptime:.0f} s"),
            ("API socket", status.listen.socket),
            ("peer server", status.listen.peers or "off"),
            ("hit ratio (cache + peers)", _percent(branch)),
            ("local hit ratio (cache)", _percent(local)),
            ("open handles", str(status.counter("open_handles"))),
            ("publications", str(status.counter("publications"))),
        ],
    )
    cache, peers = status.counter("bytes_from_cache"), status.counter("bytes_from_peers")
    sources = _key_values(
        "Bytes applications got, by source",
        [
            ("from cache", human_bytes(cache)),
            ("from peers", human_bytes(peers)),
            ("from origin", human_bytes(status.counter("bytes_from_origin"))),
            ("kept off the WAN", human_bytes(cache + peers)),
            ("served to peers", human_bytes(status.counter("bytes_served_to_peers"))),
        ],
    )
    return Group(service, cache_table(status.cache), sources, peers_table(status.peers))


class _SpeedColumn(ProgressColumn):
    """Transfer speed in the units of the sizes beside it (rich's own column says MB/s)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            "?" if speed is None else human_bytes(speed) + "/s", style="progress.data.speed"
        )


@contextlib.contextmanager
def progress_bar(console: Console, description: str) -> Iterator[ProgressCallback]:
    """A transfer progress bar on ``console``; yields the callback that moves it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),  # KiB, MiB, ... as everywhere else in peerdist
        _SpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update
