"""Run every benchmark (``make bench``), or those named: ``python -m benchmarks hash cache``.

Each benchmark prints its figure as a ratio against the limit measured in the same run
(hashlib for hashing, a raw socket or plain aiohttp for data paths) plus absolute MB/s, and
the machine's one-minute load average before and after it (figures move with the load).
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import time

import benchmarks


def main(argv: list[str]) -> int:
    names = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(benchmarks.__path__)
        if m.name.startswith("bench_")
    )
    chosen = [n for n in names if not argv or n in argv]
    print(f"{os.cpu_count()} CPUs; each benchmark ends with the load average before and after")
    for name in chosen:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        load = os.getloadavg()[0]
        module = importlib.import_module(f"benchmarks.bench_{name}")
        module.main([])
        took = time.perf_counter() - started
        print(f"   ({took:.1f} s, load {load:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
