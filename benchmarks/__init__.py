"""Benchmarks: each module ``bench_*.py`` has ``main(argv) -> None`` and prints its figures."""
