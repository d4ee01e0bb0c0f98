"""``gnca data download mnist DIR``: fetch the four MNIST IDX files with :func:`pooch.retrieve`,
checked against pinned SHA-256 sums.

This is the only code in gnca that touches the network, and only when the user asks for it:
training, growing and evaluating never download anything.

Each file is fetched from the first mirror that delivers it intact. pooch streams it into a
temporary file in ``DIR``, checks its SHA-256 and only then moves it to ``DIR/<name>``, so a
final name never holds a bad or partial file; a transfer that fails or does not match the pin is
deleted and the next mirror is tried. pooch does not resume: an interrupted file is fetched again
from its first byte. A file already present with the right checksum is skipped; one with another
checksum is downloaded again and replaced.

A failure raises :class:`DownloadError` with one line naming the file, each mirror tried and
why it failed.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import pooch
import requests
import urllib3.exceptions
from tqdm import tqdm

__all__ = [
    "DownloadError",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "RemoteFile",
    "download_files",
    "download_mnist",
    "sha256_of",
]

_HEADERS = {"User-Agent": "gnca-download/2 (pooch)", "Accept-Encoding": "identity"}


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: its name on the mirrors (and in the folder) and its SHA-256."""

    name: str
    sha256: str


#: The standard gzipped MNIST files as the mirrors serve them (the files of Yann LeCun's
#: original site; the same SHA-256 are pinned by torchvision's and TensorFlow's loaders).
MNIST_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "train-images-idx3-ubyte.gz",
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    ),
    RemoteFile(
        "train-labels-idx1-ubyte.gz",
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    ),
    RemoteFile(
        "t10k-images-idx3-ubyte.gz",
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    ),
    RemoteFile(
        "t10k-labels-idx1-ubyte.gz",
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
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
    return pooch.file_hash(str(path), alg="sha256")


def _chain(err: BaseException) -> list[BaseException]:
    """``err`` and what caused it, outermost first (requests wraps urllib3, which wraps the
    ``OSError`` that says what happened)."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and all(e is not c for c in chain):
        chain.append(e)
        inner = getattr(e, "reason", None)
        e = inner if isinstance(inner, BaseException) else e.__cause__ or e.__context__
    return chain


def _reason(err: BaseException) -> str:
    """A short, one-line reason for a network error: the cause that says what happened (an HTTP
    status, a refused connection, a timeout, an unknown host), else the error's own text."""
    chain = _chain(err)
    for e in chain:
        if isinstance(e, requests.HTTPError) and e.response is not None:
            return f"HTTP {e.response.status_code} {e.response.reason}".strip()
        if isinstance(e, socket.gaierror):
            return f"host not found ({e.strerror or e}; offline?)"
        if isinstance(e, TimeoutError | urllib3.exceptions.TimeoutError) and not isinstance(
            e, urllib3.exceptions.NewConnectionError
        ):
            return "timed out"
        if isinstance(e, OSError) and e.strerror:
            return e.strerror
        if isinstance(e, urllib3.exceptions.IncompleteRead):  # announced more than it sent
            return f"the connection closed after {e.partial:,} of {e.partial + e.expected:,} bytes"
    return " ".join((str(err) or type(err).__name__).split())


class _Downloader:
    """pooch's HTTP downloader for one file: a progress bar on ``stream`` when it is a terminal,
    and a failed transfer raised as :class:`_Failed` with a one-line reason."""

    def __init__(self, name: str, timeout: float, stream: TextIO) -> None:
        self.name, self.timeout, self.stream = name, timeout, stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def __call__(self, url: str, output_file: str, instance: pooch.Pooch | None) -> None:
        print(f"{self.name}: downloading from {url}", file=self.stream, flush=True)
        # total=1: pooch asks the bar's truth value before it sets the length it was sent
        bar = tqdm(
            desc=self.name,
            total=1,
            unit="B",
            unit_scale=True,
            file=self.stream,
            leave=False,
            disable=not self.tty,
        )
        http = pooch.HTTPDownloader(
            progressbar=bar if self.tty else False,
            chunk_size=1 << 16,
            timeout=self.timeout,
            headers=_HEADERS,
        )
        try:
            http(url, output_file, instance)
        except requests.RequestException as err:
            reason, got = _reason(err), os.path.getsize(output_file)
            reading = not isinstance(err, requests.HTTPError) and not any(
                isinstance(e, urllib3.exceptions.MaxRetryError) for e in _chain(err)
            )  # the server answered with the file, then failed: not before, not with an error
            if reading and "connection closed" not in reason:
                reason = f"interrupted after {got:,} bytes ({reason})"
            raise _Failed(reason + ("; the partial download was deleted" if got else "")) from None
        finally:
            bar.close()


def _fetch(
    file: RemoteFile, folder: Path, mirrors: Sequence[str], timeout: float, stream: TextIO
) -> bool:
    """Put ``file`` into ``folder``; False when it was already there with the right checksum."""
    final = folder / file.name
    if final.is_file():
        got = sha256_of(final)
        if got == file.sha256:
            print(f"{file.name}: already present, checksum ok", file=stream)
            return False
        print(
            f"{file.name}: present but its sha256 is {got[:12]}..., not {file.sha256[:12]}...: "
            f"downloading it again",
            file=stream,
        )
    reasons = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file.name
        try:  # a download into a temporary file, moved to ``final`` once its checksum matched
            pooch.retrieve(
                url,
                known_hash=f"sha256:{file.sha256}",
                fname=file.name,
                path=folder,
                downloader=_Downloader(file.name, timeout, stream),
            )
        except _Failed as err:
            reason = str(err)
        except ValueError as err:  # pooch's checksum refusal: it has deleted the download
            got = re.search(r"got ([0-9a-fA-F]{64})", str(err))
            if got is None:
                raise
            reason = (
                f"checksum mismatch (expected sha256 {file.sha256[:12]}..., got {got[1][:12]}...; "
                f"the download was deleted)"
            )
        else:
            print(f"{file.name}: {final.stat().st_size / 1e6:.1f} MB, checksum ok", file=stream)
            return True
        print(f"{file.name}: failed: {reason}", file=stream)
        reasons.append(f"{url}: {reason}")
    raise DownloadError(f"could not download {file.name} from any mirror: {'; '.join(reasons)}")


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
    stream = sys.stderr if stream is None else stream
    log = pooch.get_logger()
    level = log.level
    log.setLevel(logging.WARNING)  # gnca says what it fetches; pooch's own lines would repeat it
    try:
        return [f.name for f in files if _fetch(f, target, mirrors, timeout, stream)]
    finally:
        log.setLevel(level)


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
