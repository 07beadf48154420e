"""Downloads that never hang and never leave a half-written file under the real name.

Both of the package's downloads, CIFAR-10's tarball and torchvision's weights, go
through `download`: it streams the URL in chunks with a socket timeout (a server
that sends nothing for `timeout_seconds()` ends the download with
`DownloadTimeoutError`), hashes the bytes as they arrive, writes them to
`<name>.part-<pid>` in the destination folder and renames that file to `<name>`
only once the hash matches. A killed run leaves only the `.part-<pid>` file,
which `remove_stale` deletes at the next start once its process is gone.

Like `alexnet_k3.core`, this module imports neither Keras nor a framework. The
timeout is read at call time from `ALEXNET_K3_DOWNLOAD_TIMEOUT` (seconds,
default 60), which the command line's `--download-timeout` sets. urllib honours
the usual `https_proxy` / `http_proxy` / `no_proxy` variables.
"""

from __future__ import annotations

import hashlib
import http.client
import math
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from alexnet_k3.core import from_command_line

TIMEOUT_ENV_VAR = "ALEXNET_K3_DOWNLOAD_TIMEOUT"
DEFAULT_TIMEOUT = 60.0

_CHUNK = 1 << 16
# A temporary file whose process is alive is left alone unless nothing has written
# to it for this long (its pid may have been reused by another program).
_STALE_SECONDS = 3600.0
_PART = re.compile(r"\.part-(\d+)$")

# Looked up at call time, so that tests can serve responses without a network.
urlopen = urllib.request.urlopen


class DownloadError(OSError):
    """A download that did not complete; the message names the URL and what happened."""


class DownloadTimeoutError(DownloadError, TimeoutError):
    """The server sent nothing for the whole timeout (while connecting or mid-file)."""


class ConnectionDroppedError(DownloadError, ConnectionError):
    """The connection ended before the whole file had arrived."""


class HTTPStatusError(DownloadError):
    """The server answered with an HTTP error status (`code`)."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class WrongHashError(DownloadError):
    """The whole file arrived but its hash is not the expected one."""

    def __init__(self, message: str, found: str, size: int):
        super().__init__(message)
        self.found, self.size = found, size


def timeout_seconds(value=None) -> float:
    """The download timeout in seconds: `value`, else `ALEXNET_K3_DOWNLOAD_TIMEOUT`, else 60.

    Raises ValueError for a value that is not a positive finite number.

    Example:
        >>> timeout_seconds(5)
        5.0
    """
    origin = "download timeout"
    if value is None:
        value = os.environ.get(TIMEOUT_ENV_VAR) or DEFAULT_TIMEOUT
        origin = TIMEOUT_ENV_VAR
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not (0 < seconds < math.inf):
        raise ValueError(
            f"The {origin} must be a positive number of seconds, received {value!r}. "
            f"Set {TIMEOUT_ENV_VAR} (or --download-timeout) to e.g. 120, or unset it for "
            f"the default of {DEFAULT_TIMEOUT:g} s."
        )
    return seconds


def retry_advice(error: DownloadError) -> str:
    """What to do after `error`, in the words of the front end in use (flag or variable)."""
    if isinstance(error, DownloadTimeoutError):
        how = "--download-timeout" if from_command_line() else TIMEOUT_ENV_VAR
        return (
            f"Run again to retry (the download starts over); for a slow connection, raise "
            f"the timeout with {how} (seconds)."
        )
    if isinstance(error, ConnectionDroppedError):
        return "Run again to retry (the download starts over)."
    if isinstance(error, HTTPStatusError) and (error.code >= 500 or error.code == 429):
        return "The server failed or is busy: run again later to retry."
    return "Check the URL and the connection (behind a proxy, set https_proxy)."


def part_name(name: str, pid: int | None = None) -> str:
    """The temporary name a download of `name` is written under by process `pid`."""
    return f"{name}.part-{os.getpid() if pid is None else pid}"


def remove_stale(folder, name: str, legacy: tuple[re.Pattern, ...] = ()) -> list[Path]:
    """Deletes the temporary files that killed downloads of `name` left in `folder`.

    A `part_name(name, pid)` file goes when process `pid` no longer runs or when it
    has not been written to for an hour. `legacy` patterns name older temporary
    files (those torch hub leaves): a match whose group 1 is a pid follows the
    same rule, one without a pid group goes after an hour untouched. Returns the
    removed paths.
    """
    folder = Path(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:  # no folder yet, or not readable: nothing of ours in it
        return []
    removed = []
    for entry in entries:
        pid = _owner(entry.name, name, legacy)
        if pid is None:
            continue
        try:
            idle = time.time() - entry.lstat().st_mtime
            if idle > _STALE_SECONDS or (pid > 0 and not _running(pid)):
                entry.unlink()
                removed.append(entry)
        except OSError:  # gone already (a concurrent cleanup), or not ours to remove
            continue
    return removed


def _owner(entry: str, name: str, legacy) -> int | None:
    """The pid in a temporary file name of `name` (0: none known), None if not one."""
    if entry.startswith(f"{name}.part-"):
        match = _PART.search(entry)
        return int(match.group(1)) if match else None
    for pattern in legacy:
        match = pattern.fullmatch(entry)
        if match:
            return int(match.group(1)) if pattern.groups and match.group(1) else 0
    return None


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it runs, as another user
        return True
    return True


def download(url: str, dest, *, hash_name: str, expected: str, timeout=None) -> int:
    """Downloads `url` to `dest` if its `hash_name` hex digest starts with `expected`.

    The bytes go to `part_name(dest.name)` beside `dest` and are renamed to `dest`
    after the check; on any failure (Ctrl-C included) that file is removed and
    `dest` is untouched. Progress goes to stderr.

    Args:
        url: http(s):// or file:// URL.
        dest: the final path; its folder is created.
        hash_name: a `hashlib` algorithm, e.g. "md5" or "sha256".
        expected: the whole hex digest, or a prefix of it (torch hub's file names).
        timeout: seconds without data before giving up (default: `timeout_seconds()`).

    Returns:
        The size of the file in bytes.

    Raises:
        DownloadTimeoutError, ConnectionDroppedError, WrongHashError, or
        DownloadError (HTTP errors, unreachable hosts, unknown schemes).

    Example:
        >>> download(URL, "cache/file.tar.gz", hash_name="md5", expected=MD5)
        170498071
    """
    if not expected:
        raise ValueError("download() needs the expected hash (or a prefix of it).")
    timeout = timeout_seconds(timeout)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest.parent, dest.name)
    part = dest.parent / part_name(dest.name)
    try:
        found, size = _stream(url, part, hash_name, timeout)
        if not found.startswith(expected.lower()):
            raise WrongHashError(
                f"the file downloaded from {url} ({size} bytes) has {hash_name} {found}, "
                f"expected {expected}{'...' if len(expected) < len(found) else ''}",
                found,
                size,
            )
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    return size


def _stream(url: str, part: Path, hash_name: str, timeout: float) -> tuple[str, int]:
    """Writes `url` to `part`; returns its hex digest and size."""
    digest = hashlib.new(hash_name)
    received, total = 0, None
    print(f"Downloading {url} to {part.parent}", file=sys.stderr, flush=True)
    progress = _Progress(sys.stderr)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "alexnet-k3"})
        with urlopen(request, timeout=timeout) as response, open(part, "wb") as out:
            total = _content_length(response)
            read = getattr(response, "read1", response.read)  # what has arrived, not _CHUNK
            while chunk := read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                progress.show(received, total)
            out.flush()
            os.fsync(out.fileno())
    except (OSError, http.client.HTTPException, ValueError) as error:
        raise _failure(url, error, received, total, timeout) from error
    finally:
        progress.done()
    if total is not None and received < total:
        raise ConnectionDroppedError(_dropped(url, received, total, "the server closed it"))
    return digest.hexdigest(), received


def _content_length(response) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None and int(value) >= 0 else None
    except ValueError:
        return None


def _dropped(url: str, received: int, total: int | None, how: str) -> str:
    of = f" of {total}" if total is not None else ""
    host = urllib.parse.urlsplit(url).netloc or url
    return (
        f"the connection to {host} dropped after {received}{of} bytes of {url} ({how}); "
        "nothing was kept"
    )


def _failure(url, error, received: int, total, timeout: float) -> DownloadError:
    """The `DownloadError` that says what `error`, raised by urllib mid-download, means."""
    if isinstance(error, DownloadError):
        return error
    reason = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(error, urllib.error.HTTPError):
        return HTTPStatusError(f"{url} answered HTTP {error.code} {error.reason}", error.code)
    if isinstance(reason, TimeoutError):
        after = f" after {received}{f' of {total}' if total else ''} bytes" if received else ""
        return DownloadTimeoutError(
            f"the download of {url} timed out: no data for {timeout:g} s{after}; nothing was kept"
        )
    if isinstance(reason, http.client.IncompleteRead | ConnectionError):
        return ConnectionDroppedError(_dropped(url, received, total, type(reason).__name__))
    if isinstance(error, urllib.error.URLError):
        return DownloadError(f"{url} could not be reached ({reason})")
    return DownloadError(f"the download of {url} failed ({type(error).__name__}: {error})")


class _Progress:
    """A percentage on one terminal line, redrawn at most twice a second; silent in logs."""

    def __init__(self, stream):
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.last = 0.0
        self.shown = False

    def show(self, received: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.live or now - self.last < 0.5:
            return
        self.last, self.shown = now, True
        if total:
            text = f"{100 * received / total:3.0f}% of {total / (1 << 20):.1f} MiB"
        else:
            text = f"{received / (1 << 20):.1f} MiB"
        self.stream.write(f"\r  {text}")
        self.stream.flush()

    def done(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
