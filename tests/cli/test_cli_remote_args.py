"""Argument parsing of the remote subcommands, and the one-line error when no daemon runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from peerdistd.cli import build_parser, main


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], {"json": False, "socket": None}),
        (["status", "--json", "--socket", "/s.sock"], {"json": True, "socket": Path("/s.sock")}),
        (
            ["publish", "f.iso", "--id", "x", "--version", "2", "--content-info", "ci.bin"],
            {
                "file": Path("f.iso"),
                "id": "x",
                "version": 2,
                "hash": "sha256",
                "content_info": Path("ci.bin"),
            },
        ),
        (
            ["content-info", "x", "--offset", "0", "--length", "65536", "-o", "-"],
            {"id": "x", "offset": 0, "length": 65536, "version": None, "output": Path("-")},
        ),
        (["unpublish", "x"], {"id": "x"}),
        (
            ["fetch", "--content-info", "ci", "--origin", "http://127.0.0.1:8080/f", "-o", "out"],
            {
                "content_info": Path("ci"),
                "origin": "http://127.0.0.1:8080/f",
                "output": Path("out"),
                "timeout_ms": None,
            },
        ),
        (
            ["fetch", "--content-info=ci", "--origin=https://h/f", "-o=o", "--timeout-ms", "0"],
            {"timeout_ms": 0, "origin": "https://h/f"},
        ),
        (["cache"], {"flush": False}),
        (["cache", "--flush"], {"flush": True}),
        (["peers", "--socket", "rel.sock"], {"socket": Path("rel.sock")}),
    ],
)
def test_parses(argv: list[str], expected: dict[str, object]) -> None:
    args = build_parser().parse_args(argv)
    assert callable(args.func)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["fetch", "--content-info", "ci", "-o", "o"], "--origin"),
        (["fetch", "--content-info", "ci", "--origin", "ftp://h/f", "-o", "o"], "not an http"),
        (
            [
                "fetch",
                "--content-info",
                "c",
                "--origin",
                "http://h/",
                "-o",
                "o",
                "--timeout-ms",
                "-1",
            ],
            "not a non-negative integer",
        ),
        (["publish", "f", "--version", "3"], "invalid choice"),
        (["content-info", "x"], "-o/--output"),
        (["content-info", "x", "--offset", "ten", "-o", "o"], "not a non-negative integer"),
    ],
)
def test_rejects(argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


def test_offset_without_length_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Checked before any request, so no daemon is needed.
    argv = ["content-info", "x", "--offset", "5", "-o", "o", "--socket", str(tmp_path / "s")]
    assert main(argv) == 2
    assert capsys.readouterr().err == (
        "peerdist: error: give both --offset and --length, or neither\n"
    )


@pytest.mark.parametrize(
    "command", [["status"], ["peers"], ["cache", "--flush"], ["unpublish", "x"]]
)
def test_no_daemon_is_one_clear_line(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = tmp_path / "api.sock"
    assert main([*command, "--socket", str(sock)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"peerdist: error: cannot reach peerdistd at {sock}: No such file or directory"
        " — is it running?\n"
    )


def test_default_socket_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PEERDISTD_SOCKET", str(tmp_path / "env.sock"))
    assert main(["status"]) == 1
    assert f"cannot reach peerdistd at {tmp_path / 'env.sock'}:" in capsys.readouterr().err
