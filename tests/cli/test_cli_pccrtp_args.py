"""``peerdist origin`` and ``peerdist fetch URL``: arguments, and the origin's life as a process."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from peerdistd.cli import build_parser, main

PEERDIST = [sys.executable, "-c", "import sys; from peerdistd.cli import main; sys.exit(main())"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["origin", "www"],
            {"folder": Path("www"), "listen": ("127.0.0.1", 8000), "max_version": 2},
        ),
        (
            ["origin", "www", "--listen", "[::1]:0", "--max-version", "1", "--hash-wait", "0.5"],
            {"listen": ("::1", 0), "max_version": 1, "hash_wait": 0.5},
        ),
        (
            ["fetch", "http://h/f", "-o", "o"],
            {"url": "http://h/f", "origin": None, "content_info": None, "peerdist_version": "1.1"},
        ),
        (
            ["fetch", "--origin", "http://h/f", "-o", "o", "--peerdist-version", "1.0"],
            {"url": None, "origin": "http://h/f", "peerdist_version": "1.0"},
        ),
        (
            ["fetch", "http://h/f", "--content-info", "ci", "-o", "o"],
            {"url": "http://h/f", "content_info": Path("ci")},
        ),
    ],
)
def test_parses(argv: list[str], expected: dict[str, object]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["origin", "www", "--listen", "8000"], "not HOST:PORT"),
        (["origin", "www", "--listen", "h:99999"], "not HOST:PORT"),
        (["origin", "www", "--max-version", "3"], "invalid choice"),
        (["fetch", "-o", "o"], "one of the arguments URL --origin is required"),
        (["fetch", "http://a/", "--origin", "http://b/", "-o", "o"], "not allowed with"),
        (["fetch", "ftp://a/", "-o", "o"], "not an http(s) URL"),
        (["fetch", "http://a/", "-o", "o", "--peerdist-version", "2.0"], "invalid choice"),
    ],
)
def test_rejects(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_origin_of_no_folder_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["origin", str(tmp_path / "none")]) == 2
    assert capsys.readouterr().err == f"peerdist: error: {tmp_path / 'none'} is not a folder\n"


def test_origin_process_serves_until_sigterm_then_says_what_it_served(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"hello")
    # No daemon at all: plain bytes for everyone, and the origin still starts and stops cleanly.
    argv = ["origin", str(tmp_path), "--listen", "127.0.0.1:0", "--socket", str(tmp_path / "s")]
    with subprocess.Popen(
        [*PEERDIST, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith(f"serving {tmp_path} at http://127.0.0.1:")
        url = first.split(" at ", 1)[1].split("/ ", 1)[0] + "/f.txt"
        request = urllib.request.Request(url, headers={"Accept-Encoding": "peerdist"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert (answer.status, answer.read()) == (200, b"hello")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert out == "served identity 1 (5 bytes), peerdist 0 (0 bytes), missing-data 0 (0 bytes)\n"
