"""``gnca data download mnist DIR``: fetch the four MNIST IDX files, checked against pinned
SHA-256 sums.

This is the only code in gnca that touches the network, and only when the user asks for it:
training, growing and evaluating never download anything. Only the standard library is used.

Each file is fetched from the first mirror that delivers it intact:

* it is written to ``DIR/<name>.part`` and renamed to ``DIR/<name>`` (``os.replace``) only after
  its SHA-256 matched the pin, so a final name never holds a bad or partial file;
* an existing ``.part`` is continued with an HTTP ``Range`` request; a server that ignores the
  range sends the whole file, which then replaces the ``.part``;
* a file already present with the right checksum is skipped;
* a download whose checksum does not match is deleted (resuming it could not repair it) and the
  next mirror is tried.

A failure raises :class:`DownloadError` with one line naming the file, each mirror tried and
why it failed.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

__all__ = [
    "DownloadError",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "RemoteFile",
    "download_files",
    "download_mnist",
    "sha256_of",
]

_CHUNK = 1 << 16
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: its name on the mirrors (and in the folder), SHA-256 and size.

    ``size`` (bytes) is optional; when given, a ``.part`` of that size is checked without a
    request and a server sending more than that is cut off.
    """

    name: str
    sha256: str
    size: int | None = None


#: The standard gzipped MNIST files as the mirrors serve them (the files of Yann LeCun's
#: original site; the same SHA-256 are pinned by torchvision's and TensorFlow's loaders).
MNIST_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        9_912_422,
    ),
    RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        28_881,
    ),
    RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        1_648_877,
    ),
    RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
        4_542,
    ),
)

#: Public mirrors of the MNIST files, tried in this order.
MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


class DownloadError(Exception):
    """A download failed; the one-line message names the file, the mirrors and the reasons."""


class _Failed(Exception):
    """One mirror failed to deliver one file (the reason, without the URL)."""


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes as 64 lower-case hex digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


class _Progress:
    """Progress of one download on ``stream``: a line redrawn in place on a terminal, else one
    line when a file starts and one when it is done."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self.name = ""
        self.last = 0.0

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def start(self, name: str, url: str, offset: int) -> None:
        self.name = name
        resume = f", resuming at {_mb(offset)}" if offset else ""
        if self.tty:
            self.stream.write(f"{name}: connecting to {url}{resume}")
            self.stream.flush()
        else:
            self.say(f"{name}: downloading from {url}{resume}")

    def update(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.tty or now - self.last < 0.1:
            return
        self.last = now
        share = f" ({100 * done / total:3.0f}%)" if total else ""
        of = f" of {_mb(total)}" if total else ""
        self.stream.write(f"\r\033[K{self.name}: {_mb(done)}{of}{share}")
        self.stream.flush()

    def end(self, line: str) -> None:
        if self.tty:
            self.stream.write("\r\033[K")
        self.say(line)


def _reason(err: BaseException) -> str:
    """A short, one-line reason for a network error."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}".strip()
    if isinstance(err, urllib.error.URLError):
        inner = err.reason
        return _reason(inner) if isinstance(inner, BaseException) else str(inner)
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, socket.gaierror):
        return f"host not found ({err.strerror or err}; offline?)"
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return " ".join(str(text).split())


def _transfer(
    url: str, part: Path, file: RemoteFile, timeout: float, progress: _Progress, resume: bool
) -> None:
    """Download ``url`` into ``part``, continuing an existing ``part`` when ``resume``.

    Returns when the transfer is complete (the checksum is the caller's business); raises
    :class:`_Failed` otherwise, keeping what was received in ``part``.
    """
    offset = part.stat().st_size if resume and part.exists() else 0
    if file.size is not None and offset >= file.size:
        if offset == file.size:
            return  # complete already: the checksum decides
        offset = 0  # longer than the file can be: start again
    if not offset:
        part.unlink(missing_ok=True)
    headers = {"User-Agent": "gnca-download/1 (Python urllib)", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    progress.start(file.name, url, offset)
    try:
        response = urllib.request.urlopen(  # http(s) only: download_files checks the scheme
            urllib.request.Request(url, headers=headers), timeout=timeout
        )
    except urllib.error.HTTPError as err:
        err.close()
        if err.code == 416 and offset:  # nothing after the offset: the .part is complete
            return
        raise _Failed(_reason(err)) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as err:
        raise _Failed(_reason(err)) from None
    with response:
        length = response.headers.get("Content-Length")
        size = int(length) if length and length.isdigit() else None
        if offset and response.status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            if match is None or int(match[1]) != offset:
                response.close()  # an answer for other bytes than asked: start afresh
                return _transfer(url, part, file, timeout, progress, resume=False)
            mode, done = "ab", offset
        elif response.status == 200:
            mode, done = "wb", 0  # no range support: the whole file again
        else:
            raise _Failed(f"unexpected HTTP status {response.status}")
        total = done + size if size is not None else file.size
        with open(part, mode) as fh:  # a local disk error is raised as it is: not the mirror's
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as err:
                    raise _Failed(f"interrupted after {done:,} bytes ({_reason(err)})") from None
                if not chunk:
                    break
                fh.write(chunk)
                done += len(chunk)
                if file.size is not None and done > file.size:
                    fh.close()
                    part.unlink()
                    raise _Failed(f"the server sent more than the {file.size:,} bytes of the file")
                progress.update(done, total)
            fh.flush()
            os.fsync(fh.fileno())
    if total is not None and done < total:
        raise _Failed(f"the connection closed after {done:,} of {total:,} bytes")


def _fetch(
    file: RemoteFile, folder: Path, mirrors: Sequence[str], timeout: float, progress: _Progress
) -> bool:
    """Put ``file`` into ``folder``; False when it was already there with the right checksum."""
    final, part = folder / file.name, folder / (file.name + ".part")
    if final.is_file():
        got = sha256_of(final)
        if got == file.sha256:
            progress.say(f"{file.name}: already present, checksum ok")
            return False
        progress.say(
            f"{file.name}: present but its sha256 is {got[:12]}..., not {file.sha256[:12]}...: "
            f"downloading it again"
        )
    reasons = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file.name
        try:
            _transfer(url, part, file, timeout, progress, resume=True)
        except _Failed as err:
            progress.end(f"{file.name}: failed: {err}")
            reasons.append(f"{url}: {err}")
            continue
        got = sha256_of(part)
        if got != file.sha256:
            part.unlink()
            progress.end(f"{file.name}: checksum mismatch, download deleted")
            reasons.append(
                f"{url}: checksum mismatch (expected sha256 {file.sha256[:12]}..., got "
                f"{got[:12]}...; the download was deleted)"
            )
            continue
        os.replace(part, final)
        progress.end(f"{file.name}: {_mb(final.stat().st_size)}, checksum ok")
        return True
    kept = (
        f"; {part.name} keeps the {part.stat().st_size:,} bytes received: run the command again "
        f"to resume"
        if part.is_file()
        else ""
    )
    raise DownloadError(
        f"could not download {file.name} from any mirror: {'; '.join(reasons)}{kept}"
    )


def download_files(
    folder: str | os.PathLike[str],
    files: Sequence[RemoteFile],
    mirrors: Sequence[str],
    *,
    timeout: float = 30.0,
    stream: TextIO | None = None,
) -> list[str]:
    """Download ``files`` into ``folder`` (created if needed) from the first mirror that has
    each, verifying every file's SHA-256.

    Args:
        folder: destination folder.
        files: what to fetch (:data:`MNIST_FILES` for MNIST; tests pass their own).
        mirrors: base URLs (``http://`` or ``https://``) tried in order; a file's URL is the
            mirror followed by its name.
        timeout: seconds a connection may stay silent before the mirror counts as failed.
        stream: where progress goes (default ``sys.stderr``).

    Returns:
        The names of the files downloaded (those already present are left out).

    Raises:
        DownloadError: the folder cannot be used, a mirror URL is not http(s), or a file could
            not be fetched intact from any mirror.
    """
    if not mirrors:
        raise DownloadError("no mirror to download from")
    for mirror in mirrors:
        if not re.match(r"https?://[^/]", mirror):
            raise DownloadError(f"mirror {mirror!r} is not an http:// or https:// URL")
    target = Path(folder).expanduser()
    if target.exists() and not target.is_dir():
        raise DownloadError(f"{target} exists and is not a folder")
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create the folder {target}: {_reason(err)}") from None
    progress = _Progress(sys.stderr if stream is None else stream)
    return [f.name for f in files if _fetch(f, target, mirrors, timeout, progress)]


def download_mnist(
    folder: str | os.PathLike[str],
    mirrors: Sequence[str] | None = None,
    *,
    timeout: float = 30.0,
    stream: TextIO | None = None,
) -> list[str]:
    """Download the four MNIST IDX files (:data:`MNIST_FILES`) into ``folder``.

    ``mirrors`` replaces :data:`MNIST_MIRRORS`; see :func:`download_files` for the rest.
    """
    return download_files(
        folder,
        MNIST_FILES,
        list(mirrors) if mirrors else MNIST_MIRRORS,
        timeout=timeout,
        stream=stream,
    )
