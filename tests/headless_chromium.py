"""Headless Chromium driven over `--remote-debugging-pipe`: the DevTools protocol on two pipes.

No driver, no TCP port and no Python package beyond the standard library: Chromium
reads commands as NUL-terminated JSON on its fd 3 and answers on its fd 4. Every
event the page's session sends (Network.requestWillBeSent among them) is kept, so
a test sees every request the page made, not only the ones that succeeded.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FLAGS = [
    "--headless",
    "--remote-debugging-pipe",
    # The page is a local file the test wrote; containers (CI's, this machine's) often
    # lack the namespaces Chromium's sandbox needs, and root cannot use it at all.
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--mute-audio",
    # Nothing the page asks for can leave the machine; the attempt is still an event.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
]


def find_chromium() -> str | None:
    """The Chromium executable on PATH (Debian's `chromium`), or None."""
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """One headless Chromium process and one page in it.

    Example:
        >>> with Chromium(find_chromium(), tmp_path) as browser:  # doctest: +SKIP
        ...     browser.open(page.as_uri())
    """

    def __init__(self, executable: str, profile: Path, timeout: float = 60.0):
        self.timeout = timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._buffer = b""
        # A file, not a pipe: Chromium logs freely, and an unread pipe would stall it.
        self._log = tempfile.TemporaryFile()
        commands_read, self._commands = os.pipe()
        self._answers, answers_write = os.pipe()
        # fd 3 and fd 4 of Chromium are the pipes' ends; its stdin/stdout carry them in.
        self.process = subprocess.Popen(
            ["sh", "-c", 'exec "$@" 3<&0 4>&1 </dev/null >/dev/null', "sh", executable]
            + FLAGS
            + [f"--user-data-dir={profile}", "about:blank"],
            stdin=commands_read,
            stdout=answers_write,
            stderr=self._log,
        )
        os.close(commands_read)
        os.close(answers_write)
        try:
            target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            attached = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})
            self.session = attached["sessionId"]
            for domain in ("Network", "Page", "Runtime", "Log"):
                self.send(f"{domain}.enable", session=self.session)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Sends one command and returns its result; events arriving meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        answer = self._wait(lambda m: m.get("id") == self._next_id, method)
        if "error" in answer:
            raise RuntimeError(f"Chromium refused {method}: {answer['error']}")
        return answer.get("result", {})

    def page(self, method: str, params: dict | None = None) -> dict:
        """`send` to the page's session."""
        return self.send(method, params, session=self.session)

    def wait_event(self, method: str) -> dict:
        """The first event `method` of the page's session, waiting for it if not yet seen."""
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._wait(lambda m: m.get("method") == method, method)

    def open(self, url: str, width: int = 1280, height: int = 900) -> None:
        """Loads `url` in the page at `width` x `height` CSS pixels and waits for its load."""
        self.page(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )
        self.events.clear()
        self.page("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str):
        """The JSON value of a JavaScript expression (a promise is awaited)."""
        result = self.page(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression[:60]}... raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def requested_urls(self) -> list[str]:
        """Every URL the page asked for since `open`, as Network.requestWillBeSent saw them."""
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent"
        ]

    def screenshot(self) -> bytes:
        """A PNG of the whole page, beyond the window's height."""
        import base64

        size = self.page("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = self.page(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": clip},
        )
        return base64.b64decode(shot["data"])

    def close(self) -> None:
        """Closes the browser (politely, then by force) and the pipes."""
        if self.process.poll() is None:
            try:
                os.write(self._commands, json.dumps({"id": 0, "method": "Browser.close"}).encode())
                os.write(self._commands, b"\0")
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        for fd in (self._commands, self._answers):
            try:
                os.close(fd)
            except OSError:
                pass
        self._log.close()

    def _wait(self, wanted, what: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            ready = select.select([self._answers], [], [], max(left, 0))[0] if left > 0 else []
            chunk = os.read(self._answers, 1 << 20) if ready else b""
            if not chunk:
                state = "exited" if self.process.poll() is not None else "gave no answer"
                raise RuntimeError(
                    f"Chromium {state} while waiting for {what} ({self.timeout:.0f} s): "
                    f"{self._stderr_tail()}"
                )
            self._buffer += chunk

    def _stderr_tail(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-1500:] or "(nothing on stderr)"
