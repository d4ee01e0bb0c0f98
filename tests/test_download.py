"""``gnca data download mnist DIR`` against local HTTP servers on 127.0.0.1 (no internet):
a full MNIST download served from ``$GNCA_DATA``, and synthetic files for truncated, corrupt,
stalled, unreachable and already-present downloads.

The downloads go through pooch, which does not resume: a failed transfer is deleted and the next
run fetches the file from its first byte (hence no tests of ``Range`` requests here)."""

from __future__ import annotations

import hashlib
import io
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import gnca.download as dl
from gnca.cli import main
from gnca.data import _MNIST_FILES, load_mnist_idx
from gnca.download import RemoteFile, download_files

BIG = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()
SMALL = b"gnca test file\n" * 100


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Server(ThreadingHTTPServer):
    """Serves ``files`` (name -> bytes) at ``/<name>``; ``mode`` breaks the answers on purpose:
    ``ok``, ``truncate`` (announces the whole length, sends half and closes), ``short``
    (announces and sends half), ``corrupt`` (one byte flipped), ``stall`` (headers, then
    silence). ``ranges`` says whether ``Range: bytes=N-`` is honoured; ``requests`` records
    ``(name, Range header)``."""

    daemon_threads = True

    def __init__(self, files: dict[str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.files = files
        self.mode = "ok"
        self.ranges = True
        self.requests: list[tuple[str, str | None]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        name = self.path.lstrip("/")
        srv.requests.append((name, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        if srv.mode == "corrupt":
            data = data[:100] + bytes([data[100] ^ 0xFF]) + data[101:]
        start = 0
        asked = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if asked and srv.ranges:
            start = int(asked[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        sent = body[: len(body) // 2] if srv.mode in ("truncate", "short") else body
        self.send_header("Content-Length", str(len(sent if srv.mode == "short" else body)))
        self.end_headers()
        if srv.mode == "stall":
            time.sleep(1.5)
            return
        self.wfile.write(sent)


@pytest.fixture
def serve() -> Iterator:
    """``serve(files)`` starts a :class:`Server` in a thread; all are shut down afterwards."""
    servers: list[Server] = []

    def start(files: dict[str, bytes]) -> Server:
        srv = Server(files)
        threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


@pytest.fixture
def synthetic(monkeypatch: pytest.MonkeyPatch) -> list[RemoteFile]:
    """Two synthetic files pinned in place of the MNIST files (the test hook)."""
    files = [RemoteFile("big.bin", sha(BIG)), RemoteFile("small.bin", sha(SMALL))]
    monkeypatch.setattr(dl, "MNIST_FILES", tuple(files))
    return files


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def download(capsys, folder: Path, *mirrors: str) -> tuple[int, str, str]:
    argv = ["data", "download", "mnist", str(folder), "--timeout", "0.5"]
    for m in mirrors:
        argv += ["--mirror", m]
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def last_error(err: str) -> str:
    """The one error line, which ends stderr (progress lines come before it)."""
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert [ln for ln in lines if ln.startswith("gnca: error:")] == lines[-1:], err
    return lines[-1]


# ---------------------------------------------------------------------- the real MNIST files
def test_pinned_mnist_files_are_the_standard_four() -> None:
    assert [f.name for f in dl.MNIST_FILES] == [f"{b}.gz" for b in _MNIST_FILES]
    for f in dl.MNIST_FILES:
        assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
    assert all(m.startswith("https://") and m.endswith("/") for m in dl.MNIST_MIRRORS)


@pytest.fixture
def mnist_folder() -> Path:
    env = os.environ.get("GNCA_DATA")
    if not env:
        pytest.skip("GNCA_DATA is not set: the full download test serves the MNIST files there")
    folder = Path(env)
    if not all((folder / f"{b}.gz").is_file() for b in _MNIST_FILES):
        pytest.skip(f"GNCA_DATA={env} does not hold the four gzipped MNIST IDX files")
    return folder


def test_download_mnist_then_load_it(capsys, serve, mnist_folder, tmp_path, monkeypatch) -> None:
    files = {f.name: (mnist_folder / f.name).read_bytes() for f in dl.MNIST_FILES}
    # the shared copies are re-compressed (their README): pin what this server serves
    pins = tuple(RemoteFile(n, sha(b)) for n, b in files.items())
    monkeypatch.setattr(dl, "MNIST_FILES", pins)
    srv = serve(files)
    target = tmp_path / "new" / "mnist"
    code, out, err = download(capsys, target, srv.url)
    assert code == 0, err
    for name, data in files.items():
        assert dl.sha256_of(target / name) == sha(data)
    assert sorted(p.name for p in target.iterdir()) == sorted(files)  # no temporary file left
    assert f"export GNCA_DATA={target}" in out and "4 downloaded now" in out
    assert "checksum ok" in err
    train_x, train_y, test_x, test_y = load_mnist_idx(target)
    assert train_x.shape == (60000, 28, 28) and test_x.shape == (10000, 28, 28)
    assert np.bincount(train_y).tolist()[:2] == [5923, 6742]
    # a second run finds every file in place and asks the server for nothing
    before = len(srv.requests)
    code, out, err = download(capsys, target, srv.url)
    assert code == 0 and len(srv.requests) == before
    assert err.count("already present, checksum ok") == 4 and "0 downloaded now" in out


# ---------------------------------------------------------------------- synthetic files
def test_download_synthetic_files(capsys, serve, synthetic, tmp_path) -> None:
    srv = serve({"big.bin": BIG, "small.bin": SMALL})
    code, out, _ = download(capsys, tmp_path, srv.url)
    assert code == 0
    assert (tmp_path / "big.bin").read_bytes() == BIG
    assert (tmp_path / "small.bin").read_bytes() == SMALL
    assert srv.requests == [("big.bin", None), ("small.bin", None)]
    assert "Use it with:  export GNCA_DATA=" in out


def test_truncated_transfer_is_deleted_and_fetched_again(capsys, serve, synthetic, tmp_path):
    srv = serve({"big.bin": BIG, "small.bin": SMALL})
    srv.mode = "truncate"
    code, _, err = download(capsys, tmp_path, srv.url)
    assert code == 2
    assert last_error(err) == (
        f"gnca: error: could not download big.bin from any mirror: {srv.url}big.bin: the "
        f"connection closed after 150,000 of 300,000 bytes; the partial download was deleted"
    )
    assert list(tmp_path.iterdir()) == []  # neither big.bin nor a temporary file
    srv.mode = "ok"
    code, _, err = download(capsys, tmp_path, srv.url)
    assert code == 0, err
    assert srv.requests[-2:] == [("big.bin", None), ("small.bin", None)]  # from the first byte
    assert (tmp_path / "big.bin").read_bytes() == BIG


@pytest.mark.parametrize("mode", ["corrupt", "short"])
def test_bad_checksum_is_an_error_and_leaves_no_file(capsys, serve, synthetic, tmp_path, mode):
    srv = serve({"big.bin": BIG, "small.bin": SMALL})
    srv.mode = mode
    code, _, err = download(capsys, tmp_path, srv.url)
    assert code == 2
    got = sha(BIG[:100] + bytes([BIG[100] ^ 0xFF]) + BIG[101:]) if mode == "corrupt" else None
    got = got or sha(BIG[:150_000])
    assert last_error(err) == (
        f"gnca: error: could not download big.bin from any mirror: {srv.url}big.bin: checksum "
        f"mismatch (expected sha256 {sha(BIG)[:12]}..., got {got[:12]}...; the download was "
        f"deleted)"
    )
    assert list(tmp_path.iterdir()) == []  # neither big.bin nor big.bin.part


def test_unreachable_mirror_is_one_line(capsys, synthetic, tmp_path):
    url = closed_port_url()
    code, _, err = download(capsys, tmp_path, url)
    assert code == 2
    line = last_error(err)
    assert line.startswith(
        f"gnca: error: could not download big.bin from any mirror: {url}big.bin: "
    )
    assert "refused" in line.lower()
    assert list(tmp_path.iterdir()) == []


def test_a_stalled_server_times_out(capsys, serve, synthetic, tmp_path):
    srv = serve({"big.bin": BIG, "small.bin": SMALL})
    srv.mode = "stall"
    code, _, err = download(capsys, tmp_path, srv.url)
    assert code == 2 and "big.bin: interrupted after 0 bytes (timed out)" in last_error(err)


def test_mirrors_are_tried_in_order(capsys, serve, synthetic, tmp_path):
    bad, good = (
        serve({"big.bin": BIG, "small.bin": SMALL}),
        serve({"big.bin": BIG, "small.bin": SMALL}),
    )
    bad.mode = "corrupt"
    empty = serve({})
    code, _, err = download(capsys, tmp_path, closed_port_url(), empty.url, bad.url, good.url)
    assert code == 0, err
    assert "big.bin: failed: HTTP 404 Not Found\n" in err
    assert "big.bin: failed: checksum mismatch (expected sha256" in err
    assert [r[0] for r in bad.requests] == ["big.bin", "small.bin"]
    assert [r[0] for r in good.requests] == ["big.bin", "small.bin"]
    assert (tmp_path / "big.bin").read_bytes() == BIG


def test_present_files_are_skipped_and_bad_ones_replaced(capsys, serve, synthetic, tmp_path):
    srv = serve({"big.bin": BIG, "small.bin": SMALL})
    (tmp_path / "big.bin").write_bytes(BIG)
    (tmp_path / "small.bin").write_bytes(b"stale")
    code, out, err = download(capsys, tmp_path, srv.url)
    assert code == 0
    assert srv.requests == [("small.bin", None)]
    assert "big.bin: already present, checksum ok" in err
    assert "small.bin: present but its sha256 is" in err
    assert (tmp_path / "small.bin").read_bytes() == SMALL and "1 downloaded now" in out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--mirror", "ftp://example.org/"], "--mirror must be an http:// or https:// URL"),
        (["--mirror", "example.org"], "--mirror must be an http:// or https:// URL"),
        (["--timeout", "0"], "--timeout must be > 0, got 0"),
    ],
)
def test_bad_options(capsys, tmp_path, argv, expected):
    assert main(["data", "download", "mnist", str(tmp_path), *argv]) == 2
    assert capsys.readouterr().err.startswith(f"gnca: error: {expected}")


def test_only_mnist_and_a_folder(capsys, tmp_path):
    assert main(["data", "download", "cifar", str(tmp_path)]) == 2
    assert "invalid choice: 'cifar'" in capsys.readouterr().err
    (tmp_path / "file").write_text("")
    code, _, err = download(capsys, tmp_path / "file", "http://127.0.0.1:1/")
    assert code == 2 and last_error(err).endswith("file exists and is not a folder")


def test_progress_on_a_terminal(serve, tmp_path):
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    srv = serve({"big.bin": BIG})
    stream = Tty()
    done = download_files(tmp_path, [RemoteFile("big.bin", sha(BIG))], [srv.url], stream=stream)
    assert done == ["big.bin"]
    text = stream.getvalue()
    assert text.startswith(f"big.bin: downloading from {srv.url}big.bin\n") and "\r" in text
    assert text.endswith("big.bin: 0.3 MB, checksum ok\n")
