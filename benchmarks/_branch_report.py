"""The branch benchmark's figures: a row of one way, the issue-style table, the JSON file."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._nodes import REPO

WAYS = ("direct", "nginx", "peerdistd")
GOAL_WAN = 1.1
GOAL_TIME = 1.2


@dataclass
class Row:
    """One way in one row: ``clients`` fetching ``size`` bytes at once or one after another."""

    way: str
    size: int
    clients: int
    together: bool
    ok: bool = False
    error: str | None = None  # why the row failed (wrong bytes above all) or could not run
    wan_bytes: int = 0
    seconds: list[float] = field(default_factory=list)  # each client's completion time
    start_spread_ms: float = 0.0  # first to last client start ("at once": goal < 100)
    origin_requests: int = 0  # requests the origin logged during the row
    origin_retransmits: int = 0  # TCP segments the origin sent twice (WAN bytes include them)
    udp_rcvbuf_drops: int = 0  # datagrams dropped for full buffers in the client hosts
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before, after
    direct_one_s: float | None = None  # one direct download of this size, same run
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mode(self) -> str:
        return "at once" if self.together or self.clients == 1 else "one after another"

    @property
    def wan_factor(self) -> float:
        return self.wan_bytes / self.size

    @property
    def later_s(self) -> list[float]:
        """One after another: the clients after the first (what a warm branch gives)."""
        return [] if self.together else self.seconds[1:]

    def ratio(self, seconds: float) -> float | None:
        return seconds / self.direct_one_s if self.direct_one_s else None

    def figures(self) -> dict[str, Any]:
        out = asdict(self)
        out["mode"] = self.mode
        if self.seconds:
            p50, most = statistics.median(self.seconds), max(self.seconds)
            out.update(wan_factor=self.wan_factor, p50_s=p50, max_s=most)
            out.update(p50_x=self.ratio(p50), max_x=self.ratio(most))
        if self.later_s:
            out["later_p50_s"] = statistics.median(self.later_s)
            out["later_max_s"] = max(self.later_s)
        return out


def label(size: int, clients: int, together: bool) -> str:
    size_text = f"{size >> 30} GiB" if size >= 1 << 30 else f"{size >> 20} MiB"
    how = "" if clients == 1 else (" at once" if together else " one after another")
    return f"{size_text}, {clients}{how}"


def cell(row: Row | None, unavailable: str | None) -> str:
    if unavailable:
        return f"unavailable: {unavailable}"
    if row is None:
        return "-"
    if not row.ok:
        return f"**FAILED**: {row.error}"
    p50, most = statistics.median(row.seconds), max(row.seconds)
    text = f"WAN {row.wan_factor:.2f}x"
    if row.way == "direct" and row.clients == 1:
        return text + f" in {p50:.1f} s"
    if row.later_s:  # one after another: the first client's time, then the warm branch's
        p50, most = row.seconds[0], row.seconds[0]
    if row.direct_one_s:
        text += f", {row.ratio(p50):.2f}x" + ("" if p50 == most else f"/{row.ratio(most):.2f}x")
    else:
        text += f", {p50:.1f}" + ("" if p50 == most else f"/{most:.1f}") + " s"
    if row.later_s:
        later = statistics.median(row.later_s)
        text += f"; later clients {later:.1f} s (max {max(row.later_s):.1f})"
    return text


def table(rows: list[Row], unavailable: dict[str, str | None]) -> str:
    """The issue's table: WAN bytes / content and p50/max time / one direct download."""
    keys: list[tuple[int, int, bool]] = []
    for r in rows:
        key = (r.size, r.clients, r.together)
        if key not in keys:
            keys.append(key)
    lines = [
        "Each cell: WAN bytes / content size, then p50/max completion time / one direct download"
        " (one after another: the first client's; later clients in seconds).",
        "",
        "| clients | " + " | ".join(WAYS) + " |",
        "|---|" + "---|" * len(WAYS),
    ]
    for key in keys:
        found = {r.way: r for r in rows if (r.size, r.clients, r.together) == key}
        cells = [cell(found.get(way), unavailable.get(way)) for way in WAYS]
        lines.append(f"| {label(*key)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def absolute(rows: list[Row]) -> str:
    """Every row's absolute figures and what explains them."""
    lines = []
    for r in rows:
        if not r.seconds:
            lines.append(f"   {label(r.size, r.clients, r.together):28} {r.way:9}: {r.error}")
            continue
        times = " ".join(f"{s:.1f}" for s in r.seconds)
        lines.append(
            f"   {label(r.size, r.clients, r.together):28} {r.way:9}:"
            f" WAN {r.wan_bytes / 2**20:7.1f} MiB, {r.origin_requests:4} origin requests,"
            f" {r.origin_retransmits} retransmits, times [{times}] s,"
            + (f" start spread {r.start_spread_ms:.1f} ms," if r.together else "")
            + f" UDP drops {r.udp_rcvbuf_drops},"
            f" load {r.load[0]:.1f}->{r.load[1]:.1f}"
        )
        ranges = r.extra.get("origin_range_requests")
        if ranges:
            lines.append(f"{'':44}origin range requests per client: {ranges}")
    return "\n".join(lines)


def verdict(rows: list[Row]) -> list[str]:
    """The issue's goals, checked on the rows that ran (a finding, not an assertion)."""
    said = []
    for r in rows:
        if r.way != "peerdistd" or not r.ok:
            continue
        what = label(r.size, r.clients, r.together)
        if r.wan_factor > GOAL_WAN:
            said.append(f"{what}: WAN {r.wan_factor:.2f}x > {GOAL_WAN}x")
        worst = r.ratio(max(r.seconds))
        limit = 1.1 if r.clients == 1 else GOAL_TIME
        if worst is not None and worst > limit:
            said.append(f"{what}: slowest client {worst:.2f}x one direct download > {limit}x")
    return said


def commit() -> str:
    done = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty"],
        check=False,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip() or "unknown"


def write_json(path: Path, args: dict[str, Any], rows: list[Row], **more: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": "branch",
        "commit": commit(),
        "cpus": os.cpu_count(),
        "args": args,
        "rows": [r.figures() for r in rows],
        **more,
    }
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
