"""``peerdist hash`` and ``peerdist inspect`` end to end, in a subprocess."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import random
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from peerdistd.proto.pccrc import ContentInformation, server_secret_key
from peerdistd.store.hasher import hash_file

VECTORS = Path(__file__).resolve().parent.parent / "vectors"
RUN = "import sys; from peerdistd.cli import main; sys.exit(main())"
DATA = random.Random(9).randbytes(300_000)


def peerdist(
    *args: str | Path, env: dict[str, str], stdin: bytes = b""
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-c", RUN, *map(str, args)],
        input=stdin,
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PEERDISTD_DAEMON_STATE_DIR": str(tmp_path / "state")}


@pytest.fixture
def content(tmp_path: Path) -> Path:
    path = tmp_path / "content.bin"
    path.write_bytes(DATA)
    return path


def _inspect(path: Path, env: dict[str, str]) -> dict[str, Any]:
    result = peerdist("inspect", path, env=env)
    assert result.returncode == 0, result.stderr
    out: dict[str, Any] = json.loads(result.stdout)
    return out


def test_hash_with_the_node_secret_then_inspect(
    tmp_path: Path, content: Path, env: dict[str, str]
) -> None:
    out = tmp_path / "content.ci"
    result = peerdist("hash", content, "-o", out, env=env)
    assert result.returncode == 0 and result.stderr == b""
    secret_file = tmp_path / "state" / "server-secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    ks = server_secret_key(secret_file.read_bytes(), 1)
    assert out.read_bytes() == hash_file(content, ks=ks).to_bytes()
    again = tmp_path / "again.ci"
    assert peerdist("hash", content, "-o", again, env=env).returncode == 0
    assert again.read_bytes() == out.read_bytes()  # the same node secret is reused

    shown = _inspect(out, env)
    assert shown["version"] == 1 and shown["algorithm"] == "sha256"
    assert shown["range"] == {"start": 0, "end": 300_000, "length": 300_000}
    (seg,) = shown["segments"]
    assert (seg["offset"], seg["length"], seg["block_size"], seg["block_count"]) == (
        0,
        300_000,
        65536,
        5,
    )
    hashes = [hashlib.sha256(DATA[i : i + 65536]).hexdigest() for i in range(0, 300_000, 65536)]
    assert seg["block_hashes"] == hashes
    hod = hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).digest()
    assert seg["hod"] == hod.hex()
    assert seg["kp"] == hmac.digest(ks, hod, "sha256").hex()


def test_hash_stdin_v2_range_with_passphrase_file(
    tmp_path: Path, content: Path, env: dict[str, str]
) -> None:
    passfile = tmp_path / "pass"
    passfile.write_bytes(b"branch passphrase")
    args: list[str | Path] = ["--version", "2", "--secret", passfile, "--offset", "1000"]
    args += ["--length", "200000"]
    from_stdin = peerdist("hash", "-", "-o", "-", *args, env=env, stdin=DATA)
    assert from_stdin.returncode == 0, from_stdin.stderr
    from_file = peerdist("hash", content, "-o", tmp_path / "f.ci", *args, env=env)
    assert from_file.returncode == 0, from_file.stderr
    assert from_stdin.stdout == (tmp_path / "f.ci").read_bytes()
    info = ContentInformation.parse(from_stdin.stdout)
    ks = server_secret_key(b"branch passphrase", 2)
    assert info == hash_file(content, version=2, ks=ks, offset=1000, length=200_000)
    assert not (tmp_path / "state").exists()  # --secret: the node secret is not touched


def test_hash_sha384(tmp_path: Path, content: Path, env: dict[str, str]) -> None:
    out = tmp_path / "c.ci"
    assert peerdist("hash", content, "-o", out, "--hash", "sha384", env=env).returncode == 0
    assert _inspect(out, env)["algorithm"] == "sha384"


def test_inspect_vectors(env: dict[str, str]) -> None:
    for name, version in (("pccrc_v1_iis85", 1), ("pccrc_v2_iis85", 2)):
        vector = json.loads((VECTORS / f"{name}.json").read_text())
        raw = bytes.fromhex(vector["content_information_hex"])
        result = peerdist("inspect", "-", env=env, stdin=raw)
        assert result.returncode == 0, (name, result.stderr)
        shown = json.loads(result.stdout)
        assert shown["version"] == version
        ids = [s["segment_id"] for s in shown["segments"]]
        assert ids == [s["HoHoDk_segment_id_hex"] for s in vector["expected"]["segments"]]


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["hash", "/nonexistent/file", "-o", "x"], b"", b"/nonexistent/file"),
        (["inspect", "/nonexistent/file"], b"", b"/nonexistent/file"),
        (["inspect", "-"], b"\x00\x01\x0c\x80", b"truncated"),
        (["inspect", "-"], b"garbage!", b"version"),
        (["hash", "-", "-o", "-", "--version", "2", "--hash", "sha384"], b"x", b"--hash"),
        (["hash", "-", "-o", "-", "--offset", "5"], b"abc", b"range"),
    ],
)
def test_errors_are_one_line_and_exit_1(
    env: dict[str, str], args: list[str], stdin: bytes, needle: bytes
) -> None:
    result = peerdist(*args, env=env, stdin=stdin)
    assert result.returncode == 1
    assert result.stdout == b""
    assert result.stderr.count(b"\n") == 1 and result.stderr.startswith(b"peerdist: error: ")
    assert needle in result.stderr


def test_unsafe_node_secret_is_refused(content: Path, env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "server-secret").write_bytes(bytes(32))
    (state / "server-secret").chmod(0o644)
    result = peerdist("hash", content, "-o", tmp_path / "x.ci", env=env)
    assert result.returncode == 1 and b"chmod 600" in result.stderr
    assert not (tmp_path / "x.ci").exists()


def test_import_key_takes_over_a_windows_secret(tmp_path: Path, env: dict[str, str]) -> None:
    """A Windows export file, imported, gives this node the IIS server's Ks."""
    from peerdistd.proto.exportkey import encrypt_exportkey

    common = json.loads((VECTORS / "common.json").read_text())
    passphrase = bytes.fromhex(common["server_passphrase_hex"])
    export = tmp_path / "branchcache.key"
    export.write_bytes(encrypt_exportkey(passphrase, "correct horse"))
    (tmp_path / "pass").write_text("correct horse\n")
    out = peerdist("import-key", export, "--passphrase-file", tmp_path / "pass", env=env)
    assert out.returncode == 0, out.stderr
    secret = tmp_path / "state" / "server-secret"
    assert secret.read_bytes() == passphrase
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    v1 = json.loads((VECTORS / "pccrc_v1_iis85.json").read_text())
    assert server_secret_key(secret.read_bytes(), 1).hex() == v1["expected"]["server_secret_Ks_hex"]
    wrong = peerdist("import-key", export, "--passphrase-file", export, env=env)
    assert wrong.returncode == 1 and wrong.stderr.startswith(b"peerdist: error:")


@pytest.mark.parametrize("version", [1, 2])
def test_set_key_passphrase_gives_the_segment_ids_of_windows(
    tmp_path: Path, content: Path, env: dict[str, str], version: int
) -> None:
    """``netsh branchcache set key passphrase="server secret"`` (what Microsoft's suite gives
    its Windows content server): Ks = H(UTF-16LE text), as the suite derives it."""
    (tmp_path / "pass").write_text("server secret\n")
    out = peerdist("set-key", "--passphrase-file", tmp_path / "pass", env=env)
    assert out.returncode == 0, out.stderr
    secret = tmp_path / "state" / "server-secret"
    assert secret.read_bytes() == "server secret".encode("utf-16-le")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    ci = tmp_path / "x.ci"
    assert peerdist("hash", content, "-o", ci, "--version", str(version), env=env).returncode == 0
    info = ContentInformation.parse(ci.read_bytes())
    magic = "MS_P2P_CACHING\0".encode("utf-16-le")
    text = "server secret".encode("utf-16-le")
    for seg in info.segments:
        data = DATA[seg.offset : seg.offset + seg.length]
        if version == 1:
            blocks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
            hod = hashlib.sha256(b"".join(hashlib.sha256(b).digest() for b in blocks)).digest()
            kp = hmac.new(hashlib.sha256(text).digest(), hod, "sha256").digest()
            segment_id = hmac.new(kp, hod + magic, "sha256").digest()
        else:
            hod = hashlib.sha512(data).digest()[:32]
            kp = hmac.new(hashlib.sha512(text).digest()[:32], hod, "sha512").digest()[:32]
            segment_id = hmac.new(kp, hod + magic, "sha512").digest()[:32]
        assert (seg.hod, seg.secret, seg.segment_id) == (hod, kp, segment_id)


def test_set_key_refuses_an_empty_passphrase(tmp_path: Path, env: dict[str, str]) -> None:
    (tmp_path / "pass").write_text("\n")
    out = peerdist("set-key", "--passphrase-file", tmp_path / "pass", env=env)
    assert out.returncode == 1 and out.stderr.startswith(b"peerdist: error:")
    assert not (tmp_path / "state" / "server-secret").exists()
