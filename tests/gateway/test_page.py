"""The web page's script (``static/index.html``) driven by Node with a stub DOM and WebSocket."""

from __future__ import annotations

import json
import shutil
import subprocess

from services.gateway.rest import index_html

HARNESS = r"""
const script = process.argv[1];
function el() { return { textContent: "", innerHTML: "", className: "", children: [],
  appendChild(c) { c.parent = this; this.children.push(c); },
  remove() { const s = this.parent.children; s.splice(s.indexOf(this), 1); } }; }
const els = {};
global.document = { getElementById: (id) => (els[id] ||= el()), createElement: el,
  createTextNode: (t) => ({ textContent: t }) };
global.location = { protocol: "http:", host: "gw:8080" };
const sockets = [];
global.WebSocket = class { constructor(u) { this.url = u; this.sent = []; this.readyState = 1;
  sockets.push(this); } send(m) { this.sent.push(JSON.parse(m)); } };
global.setTimeout = () => {};
eval(script + "\n;global.watch = watch;");
const ws = sockets[0];
ws.onopen();
const recv = (o) => ws.onmessage({ data: JSON.stringify(o) });
recv({ type: "calls", calls: [{ call_sid: "CA1" }, { call_sid: "CA2" }] });
const buttons = els.list.children.map((b) => b.textContent);
watch("CA1");
recv({ type: "subscribed", call_sid: "CA1" });
const ev = { type: "transcript", call_sid: "CA1", id: null, segment: 0, channel: 1,
  speaker: "callee", is_final: false, start: 1.25, end: 2, text: "hel" };
recv(ev);
recv({ ...ev, id: "5-0", is_final: true, text: "hello" });
const line = els.lines.children[0];
const shown = { lines: els.lines.children.length, cls: line.className, text: line.children.at(-1).textContent };
recv({ ...ev, segment: 1, text: "uh" });
const noisy = els.lines.children.length;
recv({ ...ev, segment: 1, id: "6-0", is_final: true, text: "" });
shown.noise = [noisy, els.lines.children.length];
recv({ type: "end", call_sid: "CA1" });
watch("CA2");
console.log(JSON.stringify({ url: ws.url, buttons, shown, sent: ws.sent, status: els.status.textContent }));
"""


def test_page_renders_calls_and_switches_after_end_without_a_stale_unsubscribe() -> None:
    """the page lists calls, replaces an interim by its final, clears one whose final is empty,
    and after ``end`` switches calls
    without an unsubscribe the server would answer with a not_subscribed error."""
    node = shutil.which("node")
    assert node is not None, "node is not installed (every machine of this project's kind has it)"
    script = index_html().split("<script>")[1].split("</script>")[0]
    out = subprocess.run(
        [node, "-e", HARNESS, script], capture_output=True, text=True, timeout=30, check=True
    )
    result = json.loads(out.stdout)
    assert result["url"] == "ws://gw:8080/v1/ws"
    assert result["buttons"] == ["CA1", "CA2"]
    assert result["shown"] == {
        "lines": 1,
        "cls": "line callee",
        "text": "hello",
        "noise": [2, 1],
    }  # an interim that turns out to be noise (empty final) is cleared
    assert result["sent"] == [
        {"type": "list"},
        {"type": "subscribe", "call_sid": "CA1", "since": "0"},
        {"type": "subscribe", "call_sid": "CA2", "since": "0"},
    ]
    assert result["status"] == "Watching CA2"


def test_page_opened_with_a_call_link_watches_that_call() -> None:
    """``/?call=CA…`` (a link a supervisor can share) subscribes to that call with its history."""
    node = shutil.which("node")
    assert node is not None, "node is not installed (every machine of this project's kind has it)"
    script = index_html().split("<script>")[1].split("</script>")[0]
    harness = HARNESS.replace(
        'global.location = { protocol: "http:", host: "gw:8080" };',
        'global.location = { protocol: "https:", host: "gw", search: "?call=CA7" };',
    ).split("const buttons")[0] + (
        "console.log(JSON.stringify({ url: ws.url, sent: ws.sent,"
        " status: els.status.textContent }));"
    )
    out = subprocess.run(
        [node, "-e", harness, script], capture_output=True, text=True, timeout=30, check=True
    )
    result = json.loads(out.stdout)
    assert result["url"] == "wss://gw/v1/ws"
    assert {"type": "subscribe", "call_sid": "CA7", "since": "0"} in result["sent"]
    assert result["status"] == "Watching CA7"
