"""alexnet_k3.downloads and the two downloads built on it, CIFAR-10's tarball and
torchvision's weights, against an HTTP server on 127.0.0.1 started by the test.

The server answers as a flaky network would: not at all (a socket that listens and
never accepts), half a body and then nothing (stall), half a body and a closed
connection (drop), an HTTP error, or the whole file. Timeouts are 1 s, so every test
runs in seconds. CIFAR-10 is a small tarball in the official layout with its md5
patched in (`cifar10.CIFAR10_MD5`); the weights are a tiny state_dict whose SHA-256
prefix goes into a copy of the record. A killed download is a child process that
runs the download function itself (`downloads.download`, as `torch_files` calls it
for the weights; `load_cifar10` for CIFAR-10) and is sent SIGKILL mid-body.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cifar_files import md5_of, write_cifar10

from alexnet_k3 import cli, core, downloads
from alexnet_k3.datasets import DatasetError, DatasetNotFoundError, cifar10

TIMEOUT = 1.0
# Past the largest pid Linux hands out (2**22): a process that cannot be running.
DEAD_PID = 2**22 + 1


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        body, mode = self.server.routes.get(self.path, (b"", 404))
        if isinstance(mode, int):
            self.send_error(mode)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "ok":
            self.wfile.write(body)
            return
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        if mode == "stall":
            self.server.release.wait(60)
        # "drop": returning closes the connection (HTTP/1.0), short of Content-Length.

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """Serves `server.routes[path] = (body, "ok" | "stall" | "drop" | status)`;
    `server.url(path)` is the address."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.routes, httpd.release = {}, threading.Event()
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_port}{path}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.release.set()
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def silent_url():
    """A server that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/file"


@pytest.fixture(autouse=True)
def settings(tmp_path, monkeypatch):
    """A 1 s timeout, an empty Keras cache, no CIFAR-10 mirror, Python spelling."""
    monkeypatch.setenv(downloads.TIMEOUT_ENV_VAR, str(TIMEOUT))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.delenv(cifar10.DATA_ENV_VAR, raising=False)
    monkeypatch.delenv(cifar10.URL_ENV_VAR, raising=False)
    monkeypatch.setattr(core, "_command_line", False)


def _timed(call, error_type):
    start = time.monotonic()
    with pytest.raises(error_type) as info:
        call()
    return str(info.value), time.monotonic() - start


# --------------------------------------------------------------------- the module


def test_download_checks_then_renames(tmp_path, server):
    body = os.urandom(300_000)
    server.routes["/f"] = (body, "ok")
    dest = tmp_path / "cache" / "f.bin"
    sha = hashlib.sha256(body).hexdigest()
    assert (
        downloads.download(server.url("/f"), dest, hash_name="sha256", expected=sha[:8]) == 300_000
    )
    assert dest.read_bytes() == body
    assert sorted(p.name for p in dest.parent.iterdir()) == ["f.bin"]


@pytest.mark.parametrize("mode", ["stall", "drop", 404, 503, "wrong"])
def test_failed_download_leaves_nothing(tmp_path, server, mode):
    body = os.urandom(200_000)
    server.routes["/f"] = (body, "ok" if mode == "wrong" else mode)
    dest = tmp_path / "f.bin"
    expected = "0" * 32 if mode == "wrong" else hashlib.md5(body).hexdigest()
    error = {
        "stall": downloads.DownloadTimeoutError,
        "drop": downloads.ConnectionDroppedError,
        404: downloads.HTTPStatusError,
        503: downloads.HTTPStatusError,
        "wrong": downloads.WrongHashError,
    }[mode]
    start = time.monotonic()
    with pytest.raises(error) as info:
        downloads.download(server.url("/f"), dest, hash_name="md5", expected=expected)
    assert time.monotonic() - start < 10 * TIMEOUT
    message = str(info.value)
    assert server.url("/f") in message, message
    words = {
        "stall": ("timed out", "Run again"),
        "drop": ("dropped after 100000 of 200000 bytes", "Run again"),
        404: ("HTTP 404", "Check the URL"),
        503: ("HTTP 503", "run again later"),
        "wrong": ("expected 0000", "Check the URL"),
    }[mode]
    assert words[0] in message, message
    assert words[1] in downloads.retry_advice(info.value)
    assert list(tmp_path.iterdir()) == []


def test_silent_server_times_out(tmp_path, silent_url):
    message, seconds = _timed(
        lambda: downloads.download(silent_url, tmp_path / "f", hash_name="md5", expected="ab"),
        downloads.DownloadTimeoutError,
    )
    assert "timed out" in message and silent_url in message and "1 s" in message
    assert TIMEOUT * 0.9 < seconds < 5 * TIMEOUT


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf", "nan"])
def test_bad_timeout_setting(monkeypatch, value):
    monkeypatch.setenv(downloads.TIMEOUT_ENV_VAR, value)
    with pytest.raises(ValueError, match=downloads.TIMEOUT_ENV_VAR) as info:
        downloads.timeout_seconds()
    assert repr(value) in str(info.value)


def test_stale_temporary_files_are_removed(tmp_path):
    name = "f.bin"
    dead, live = (
        tmp_path / downloads.part_name(name, DEAD_PID),
        tmp_path / downloads.part_name(name),
    )
    old_other = tmp_path / f"{name}.{'a' * 32}.partial"
    fresh_other = tmp_path / f"{name}.{'b' * 32}.partial"
    unrelated = tmp_path / f"g.bin.part-{DEAD_PID}"
    for path in (dead, live, old_other, fresh_other, unrelated):
        path.write_bytes(b"x")
    hours_ago = time.time() - 7200
    os.utime(old_other, (hours_ago, hours_ago))
    legacy = (downloads.re.compile(rf"{name}\.[0-9a-f]{{32}}\.partial"),)
    removed = downloads.remove_stale(tmp_path, name, legacy)
    assert sorted(removed) == sorted([dead, old_other])
    assert live.exists() and fresh_other.exists() and unrelated.exists()


def test_command_line_sets_the_download_settings(monkeypatch):
    # The CLI repeats the variables' names so as not to import the datasets package.
    assert cli.DOWNLOAD_TIMEOUT_ENV_VAR == downloads.TIMEOUT_ENV_VAR
    assert cli.CIFAR10_URL_ENV_VAR == cifar10.URL_ENV_VAR
    monkeypatch.delenv(cifar10.URL_ENV_VAR, raising=False)
    parser = cli.build_parser()
    args = parser.parse_args(
        ["evaluate", "m.keras", "--download-timeout", "2.5", "--cifar10-url", "file:///m"]
    )
    previous = cli._apply_download_options(args)
    assert downloads.timeout_seconds() == 2.5 and cifar10.cifar10_url() == "file:///m"
    cli._restore(previous)
    assert downloads.timeout_seconds() == TIMEOUT and cifar10.cifar10_url() == cifar10.CIFAR10_URL
    assert parser.parse_args(["convert", "--weights", "x", "--out", "y"]).download_timeout is None
    with pytest.raises(SystemExit):
        parser.parse_args(["convert", "--weights", "x", "--out", "y", "--download-timeout", "0"])


# ----------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def tarball(tmp_path, monkeypatch):
    """A small CIFAR-10 tarball whose md5 is the one checked."""
    path = write_cifar10(tmp_path / "made", 12, 6, as_tarball=True)
    monkeypatch.setattr(cifar10, "CIFAR10_MD5", md5_of(path))
    return path


def _cache() -> Path:
    return Path(os.environ["KERAS_HOME"]) / "datasets"


def test_cifar10_silent_server_times_out(monkeypatch, silent_url):
    monkeypatch.setenv(cifar10.URL_ENV_VAR, silent_url)
    message, seconds = _timed(cifar10.load_cifar10, DatasetNotFoundError)
    assert seconds < 5 * TIMEOUT
    for fragment in ("timed out", silent_url, "Run again", downloads.TIMEOUT_ENV_VAR):
        assert fragment in message, message
    assert str(_cache() / "cifar-10-python.tar.gz") in message  # where a copy goes


def test_cifar10_killed_download_is_cleaned_and_redone(server, tarball, monkeypatch):
    body = tarball.read_bytes()
    server.routes["/stall.tar.gz"] = (body, "stall")
    server.routes["/good.tar.gz"] = (body, "ok")
    code = (
        "import sys\nfrom alexnet_k3.datasets import cifar10\n"
        "cifar10.CIFAR10_MD5 = sys.argv[1]\ncifar10.load_cifar10()\n"
    )
    env = {
        **os.environ,
        cifar10.URL_ENV_VAR: server.url("/stall.tar.gz"),
        downloads.TIMEOUT_ENV_VAR: "60",
    }
    part = _kill_mid_download(
        [sys.executable, "-c", code, md5_of(tarball)], env, _cache(), "cifar-10-python.tar.gz"
    )
    assert len(body) // 2 == part.stat().st_size
    # The rerun removes what the killed run left and downloads again.
    monkeypatch.setenv(cifar10.URL_ENV_VAR, server.url("/good.tar.gz"))
    data = cifar10.load_cifar10()
    assert data.x_train.shape == (12, 32, 32, 3)
    assert sorted(p.name for p in _cache().iterdir()) == ["cifar-10-python.tar.gz"]
    assert md5_of(_cache() / "cifar-10-python.tar.gz") == md5_of(tarball)


def _kill_mid_download(argv, env, folder: Path, name: str) -> Path:
    """Starts `argv`, waits until its download has bytes on disk, SIGKILLs it; the part."""
    child = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    part = folder / downloads.part_name(name, child.pid)
    try:
        deadline = time.monotonic() + 30
        while not (part.is_file() and part.stat().st_size):
            assert child.poll() is None, child.communicate()[0].decode()[-2000:]
            assert time.monotonic() < deadline, f"{part} never appeared"
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.communicate()
    assert child.returncode == -signal.SIGKILL
    assert part.is_file() and not (folder / name).exists()
    return part


def test_cifar10_dropped_connection(server, tarball, monkeypatch):
    server.routes["/c.tar.gz"] = (tarball.read_bytes(), "drop")
    monkeypatch.setenv(cifar10.URL_ENV_VAR, server.url("/c.tar.gz"))
    message, _ = _timed(cifar10.load_cifar10, DatasetNotFoundError)
    assert "connection to 127.0.0.1" in message and "dropped" in message, message
    assert "md5" not in message.split("\n")[0]
    assert list(_cache().iterdir()) == []


def test_cifar10_mirror_is_held_to_the_official_md5(server, tarball, monkeypatch):
    server.routes["/c.tar.gz"] = (tarball.read_bytes() + b"extra", "ok")
    monkeypatch.setenv(cifar10.URL_ENV_VAR, server.url("/c.tar.gz"))
    message, _ = _timed(cifar10.load_cifar10, DatasetError)
    for fragment in (cifar10.CIFAR10_MD5, "not kept", "mirror", cifar10.CIFAR10_URL):
        assert fragment in message, message
    assert list(_cache().iterdir()) == []


def test_cifar10_messages_name_the_command_line_options(monkeypatch, silent_url, tmp_path):
    monkeypatch.setattr(core, "_command_line", True)
    monkeypatch.setenv(cifar10.URL_ENV_VAR, silent_url)
    message, _ = _timed(cifar10.load_cifar10, DatasetNotFoundError)
    for fragment in ("--download-timeout", "--cifar10-url", "--data-dir"):
        assert fragment in message, message
    assert "data_dir=" not in message
    message, _ = _timed(lambda: cifar10.load_cifar10(tmp_path / "none"), DatasetNotFoundError)
    assert f"--data-dir {tmp_path / 'none'}: " in message


# ------------------------------------------------------------------------ weights


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch, an empty torch hub cache (its checkpoints folder) and a tiny state_dict."""
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
    path = tmp_path / "tiny.pth"
    torch.save({"features.0.weight": torch.arange(32768.0).reshape(64, 512)}, path)
    return torch, Path(torch.hub.get_dir()) / "checkpoints", path.read_bytes()


def _read(url: str, body: bytes | None = None, prefix: str | None = None):
    """`read_pretrained('imagenet')` of a record pointing at `url` with `body`'s hash."""
    from alexnet_k3.weights import torch_files
    from alexnet_k3.weights.alexnet import ALEXNET

    if prefix is None:
        prefix = hashlib.sha256(body).hexdigest()[:8] if body is not None else "0badc0de"
    record = dataclasses.replace(ALEXNET.pretrained["imagenet"], url=url, sha256_prefix=prefix)
    table = dataclasses.replace(ALEXNET, pretrained={"imagenet": record})
    return torch_files.read_pretrained("imagenet", table)


def _weights_error():
    from alexnet_k3.weights import WeightsError

    return WeightsError


def test_weights_silent_server_times_out(hub, silent_url):
    url = silent_url.replace("/file", "/alexnet-owt-0badc0de.pth")
    message, seconds = _timed(lambda: _read(url), _weights_error())
    assert seconds < 5 * TIMEOUT
    for fragment in ("timed out", url, "Run again", downloads.TIMEOUT_ENV_VAR, str(hub[1])):
        assert fragment in message, message


def test_weights_killed_download_is_cleaned_and_redone(hub, server):
    torch, folder, body = hub
    name = f"alexnet-owt-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    server.routes[f"/stall/{name}"] = (body, "stall")
    server.routes[f"/good/{name}"] = (body, "ok")
    # What torch_files._download runs, in a child that imports neither Keras nor torch.
    code = (
        "import sys\nfrom alexnet_k3 import downloads\n"
        "downloads.download(sys.argv[1], sys.argv[2], hash_name='sha256', expected=sys.argv[3])\n"
    )
    argv = [sys.executable, "-c", code, server.url(f"/stall/{name}"), str(folder / name), "0"]
    env = {**os.environ, downloads.TIMEOUT_ENV_VAR: "60"}
    _kill_mid_download(argv, env, folder, name)
    # torch hub's own leftovers of an older version's download go too.
    legacy = folder / f".{name}.{DEAD_PID}.download.{'c' * 32}.partial"
    legacy.write_bytes(b"partial")
    source = _read(server.url(f"/good/{name}"), body)
    assert torch.equal(source.tensors["features.0.weight"], torch.arange(32768.0).reshape(64, 512))
    assert sorted(p.name for p in folder.iterdir()) == [name]


def test_weights_dropped_connection_is_not_called_altered(hub, server):
    _, folder, body = hub
    server.routes["/alexnet-owt-0badc0de.pth"] = (body, "drop")
    message, _ = _timed(
        lambda: _read(server.url("/alexnet-owt-0badc0de.pth"), body), _weights_error()
    )
    assert "connection to 127.0.0.1" in message and "dropped" in message, message
    assert "SHA-256" not in message and "altered" not in message, message
    assert "Run again" in message and str(folder) in message
    assert list(folder.iterdir()) == []


def test_weights_altered_download(hub, server):
    _, folder, body = hub
    server.routes["/alexnet-owt-0badc0de.pth"] = (body, "ok")
    message, _ = _timed(
        lambda: _read(server.url("/alexnet-owt-0badc0de.pth"), prefix="0badc0de"),
        _weights_error(),
    )
    assert "SHA-256" in message and "0badc0de" in message and "ended normally" in message
    assert list(folder.iterdir()) == []


def test_weights_unreadable_despite_hash_leave_the_cache(hub, server, monkeypatch):
    _, folder, _ = hub
    junk = b"PK\x03\x04 not a zip archive"
    name = f"alexnet-owt-{hashlib.sha256(junk).hexdigest()[:8]}.pth"
    server.routes[f"/{name}"] = (junk, "ok")
    monkeypatch.setattr(core, "_command_line", True)
    message, _ = _timed(lambda: _read(server.url(f"/{name}"), junk), _weights_error())
    assert "removed from torch hub's cache" in message and "downloads it again" in message
    assert "--weights imagenet" in message, message
    assert list(folder.iterdir()) == []  # so the next run does download it again
    with contextlib.suppress(_weights_error()):
        _read(server.url(f"/{name}"), junk)
    assert list(folder.iterdir()) == []


def test_convert_command_times_out_with_its_own_option_names(hub, silent_url, tmp_path, capsys):
    from alexnet_k3.weights import loader
    from alexnet_k3.weights.alexnet import ALEXNET

    url = silent_url.replace("/file", "/alexnet-owt-0badc0de.pth")
    record = dataclasses.replace(ALEXNET.pretrained["imagenet"], url=url, sha256_prefix="0badc0de")
    table = dataclasses.replace(ALEXNET, pretrained={"imagenet": record})
    out = tmp_path / "a.weights.h5"
    argv = ["convert", "--weights", "imagenet", "--out", out, "--download-timeout", "0.5"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "TABLES", (table,))
        patch.delenv(downloads.TIMEOUT_ENV_VAR)
        start = time.monotonic()
        with pytest.raises(SystemExit) as exit_info:
            cli.main([str(a) for a in argv])
        assert time.monotonic() - start < 5 and exit_info.value.code == 2
        assert downloads.TIMEOUT_ENV_VAR not in os.environ  # put back after the command
    message = capsys.readouterr().err
    for fragment in ("convert: error", "--weights imagenet", "timed out", "0.5 s", url):
        assert fragment in message, message
    assert "--download-timeout" in message and "--weights PATH" in message, message
    assert not core.from_command_line() and not out.exists()
