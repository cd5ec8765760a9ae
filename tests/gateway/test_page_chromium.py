"""The supervisor page in headless Chromium against a real gateway and redis-server.

Chromium is driven over the DevTools protocol (a WebSocket, with the ``websockets`` client the
project already has); screenshots are kept in ``tests/artifacts/`` (git-ignored) as test
artefacts. ``.ci/run`` installs Chromium on a fresh machine.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis
from websockets.asyncio.client import ClientConnection, connect

from tests.gateway.conftest import FakeTranscriber
from tests.gateway.test_history import write_call

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
WAIT_S = 20.0
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage",
    "--window-size=1280,800", "--remote-debugging-port=0",
]  # fmt: skip


class Browser:
    """One Chromium page over CDP: :meth:`goto`, :meth:`js`, :meth:`until`, :meth:`screenshot`."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> Any:
        n = next(self.ids)
        await self.ws.send(json.dumps({"id": n, "method": method, "params": params}))
        async with asyncio.timeout(WAIT_S):
            while True:
                msg = json.loads(await self.ws.recv())
                if msg.get("id") == n:
                    assert "error" not in msg, msg
                    return msg.get("result", {})

    async def js(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result["result"].get("value")

    async def until(self, expression: str) -> Any:
        """Evaluate ``expression`` until it is truthy (the page updates over its WebSocket)."""
        async with asyncio.timeout(WAIT_S):
            while not (value := await self.js(expression)):  # noqa: ASYNC110 - see below
                await asyncio.sleep(0.1)  # the page's DOM, not an event we can await from here
        return value

    async def goto(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.until("document.readyState === 'complete'")

    async def screenshot(self, name: str) -> Path:
        data = await self.call("Page.captureScreenshot", format="png")
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        path.write_bytes(base64.b64decode(data["data"]))
        return path


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe is not None, "chromium is not installed (.ci/run installs it)"
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            exe, *FLAGS, f"--user-data-dir={profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(WAIT_S):
                while not (m := re.search(rb"ws://\S+", await proc.stderr.readline())):
                    pass
            drain = asyncio.create_task(_drain(proc.stderr))
            port = m.group().decode().split("/")[2]
            targets = await _http_json(port, "/json/list")
            page = next(t for t in targets if t["type"] == "page")
            async with connect(page["webSocketDebuggerUrl"], max_size=1 << 26) as ws:
                browser = Browser(ws)
                await browser.call("Page.enable")
                yield browser
        finally:
            proc.kill()
            await proc.wait()
            with contextlib.suppress(NameError):
                await asyncio.wait_for(drain, WAIT_S)


async def _http_json(hostport: str, path: str) -> Any:
    async with httpx.AsyncClient(timeout=WAIT_S) as client:
        return (await client.get(f"http://{hostport}{path}")).json()


async def _drain(stream: asyncio.StreamReader) -> None:
    """Read Chromium's stderr to its end, so its chatter never fills the pipe and blocks it."""
    while await stream.read(65536):
        pass


async def test_supervisor_page_in_chromium(gateway, redis: aioredis.Redis) -> None:
    """Live and ended calls with numbers and status, a live transcript with wall-clock times, the
    failure banner, export links, search, and the reconnect indicator; screenshots kept."""
    now = time.time()
    await write_call(redis, "CAdentist", now - 900, [(1, 0.0, "Good morning, Bright Smile Dental."),
                                                     (0, 5.0, "I'd like a cleaning next week.")])  # fmt: skip
    await write_call(redis, "CAfailed", now - 600, [(0, 1.0, "Hello?")], failure="asr_failed")
    live = FakeTranscriber(redis, "CAlive")
    live.meta.from_, live.meta.to = "+15550007777", "+15550008888"
    live.meta.started_at = now - 42
    await live.start()
    async with chromium() as page:
        async with gateway() as port:
            base = f"http://127.0.0.1:{port}/"
            await page.goto(base)
            await page.until("document.querySelectorAll('#list .call').length === 1")
            await page.until("document.querySelectorAll('#recent .call').length === 2")
            live_row = await page.js("document.querySelector('#list .call').textContent")
            assert "+15550007777 → +15550008888" in live_row and "live" in live_row
            recent = await page.js(
                "[...document.querySelectorAll('#recent .call')].map(b => b.textContent)"
            )
            assert "ended: asr_failed" in recent[0] and "2 finals" in recent[1]
            await page.js("document.querySelector('#list .call').click()")
            await live.final("Thanks for calling, how can I help?", channel=1)
            line = await page.until("document.querySelector('#lines .line.callee')?.textContent")
            assert re.search(r"callee · \[00:00\] \d\d:\d\d:\d\dThanks for calling", line), line
            await page.screenshot("page_live_call.png")

            await page.js("document.querySelector('#recent .call:nth-child(1)').click()")
            banner = await page.until("document.querySelector('#banner.show')?.textContent")
            assert banner == "Transcription failed: the transcript is incomplete."
            links = await page.js(
                "[...document.querySelectorAll('#exports a')].map(a => a.textContent)"
            )
            assert links == ["TXT", "SRT", "VTT", "JSON"]
            await page.screenshot("page_failed_call.png")

            await page.js("const q = document.getElementById('q'); q.value = 'cleaning';"
                          "q.dispatchEvent(new Event('input'))")  # fmt: skip
            await page.until("document.getElementById('recent-title').textContent === 'Search: cleaning'"
                             " && document.querySelectorAll('#recent .call').length === 1")  # fmt: skip
            assert "CA" not in await page.js("document.querySelector('#recent .call').textContent")
            await page.screenshot("page_search.png")

        # the gateway stops (1012): the page says it is reconnecting
        conn = await page.until(
            "document.getElementById('conn').className === 'down'"
            " && document.getElementById('conn').textContent"
        )
        assert "reconnecting" in conn
        await page.screenshot("page_reconnecting.png")
