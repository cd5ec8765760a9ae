"""The web page's script (``static/index.html``) driven by Node with a stub DOM and WebSocket."""

from __future__ import annotations

import json
import shutil
import subprocess

from services.gateway.rest import index_html

HARNESS = r"""
const script = process.argv[1];
function el() { const e = { _text: "", innerHTML: "", className: "", children: [], dataset: {},
  attrs: {}, setAttribute(k, v) { this.attrs[k] = v; },
  appendChild(c) { c.parent = this; this.children.push(c); },
  remove() { const s = this.parent.children; s.splice(s.indexOf(this), 1); } };
  Object.defineProperty(e, "textContent", { get() { return this._text + this.children.map((c) => c.textContent || "").join(""); },
    set(v) { this._text = v; this.children = []; } });
  return e; }
const els = {};
global.document = { getElementById: (id) => (els[id] ||= el()), createElement: el,
  createTextNode: (t) => ({ textContent: t }) };
global.location = { protocol: "http:", host: "gw:8080" };
const sockets = [];
global.WebSocket = class { constructor(u) { this.url = u; this.sent = []; this.readyState = 1;
  sockets.push(this); } send(m) { this.sent.push(JSON.parse(m)); } };
global.setTimeout = () => {}; global.setInterval = () => {}; global.clearTimeout = () => {};
eval(script + "\n;global.watch = watch;");
const ws = sockets[0];
ws.onopen();
const recv = (o) => ws.onmessage({ data: JSON.stringify(o) });
recv({ type: "calls", calls: [
  { call_sid: "CA1", from: "+15550001111", to: "+15550002222", status: "live", started_at: Date.now() / 1000 - 65 },
  { call_sid: "CA2", from: "+15550003333", to: "+15550004444", status: "queued", started_at: Date.now() / 1000 - 5 }] });
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
const evil = "<img src=x onerror=alert(1)><script>alert(2)</script>";
recv({ ...ev, segment: 2, id: "7-0", is_final: true, text: evil });
const html = []; const walk = (e) => { if (e.innerHTML) html.push(e.innerHTML); (e.children || []).forEach(walk); };
Object.values(els).forEach(walk);
const markup = { html, text: els.lines.children.at(-1).textContent.includes(evil) };
recv({ type: "audio_stopped", call_sid: "CA1", at_s: 12.4, idle_s: 5 });
const stopped = [els.banner.className, els.banner.textContent];
recv({ type: "audio_resumed", call_sid: "CA1", at_s: 14 });
stopped.push(els.banner.className);
recv({ type: "error", code: "asr_failed", message: "x", call_sid: "CA1" });
const banner = [els.banner.className, els.banner.textContent];
const exportsShown = els.exports.children.map((a) => a.href);
recv({ type: "end", call_sid: "CA1" });
recv({ type: "call_ended", call: { call_sid: "CA1", from: "+15550001111", to: "+15550002222", status: "ended",
  started_at: 1800000000, ended_at: 1800000030, failure: "asr_failed", finals: 1 } });
const recentShown = els.recent.children.map((b) => b.textContent);
recv({ type: "error", code: "reconnecting", message: "x", call_sid: "CA2" });
const conn = [els.conn.className, els.conn.textContent];
watch("CA2");
console.log(JSON.stringify({ url: ws.url, buttons, shown, sent: ws.sent, status: els.status.textContent,
  banner, exportsShown, recentShown, conn, stopped, markup }));
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
    # markup in a transcript is shown as text: nothing is ever parsed as HTML
    assert result["markup"] == {"html": [], "text": True}
    # numbers, status and duration; the newest first
    assert result["buttons"][0].startswith("+15550003333 → +15550004444queued")
    assert result["buttons"][1].startswith("+15550001111 → +15550002222live")
    assert " · 01:05" in result["buttons"][1]
    assert result["banner"] == ["show", "Transcription failed: the transcript is incomplete."]
    # audio_stopped shows a banner saying so; audio_resumed takes it away
    assert result["stopped"][0] == "show" and "Audio stopped 5 s ago" in result["stopped"][1]
    assert result["stopped"][2] == ""
    assert result["exportsShown"] == [
        f"/v1/calls/CA1/transcript?format={f}" for f in ("txt", "srt", "vtt", "json")
    ]
    assert result["recentShown"][0].startswith("+15550001111 → +15550002222ended: asr_failed")
    assert "00:30 · 1 finals" in result["recentShown"][0]
    assert result["conn"] == ["down", "reconnecting…"]
    assert result["shown"] == {
        "lines": 1,
        "cls": "line callee",
        "text": "hello",
        "noise": [2, 1],
    }  # an interim that turns out to be noise (empty final) is cleared
    assert result["sent"] == [
        {"type": "list"},
        {"type": "history", "status": "ended", "limit": 20},
        {"type": "subscribe", "call_sid": "CA1", "since": "0"},
        {"type": "history", "status": "ended", "limit": 20},  # refreshed when a call ends
        {"type": "subscribe", "call_sid": "CA2", "since": "0"},
    ]
    assert result["status"].startswith("+15550003333 → +15550004444 · started ")


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
    assert result["status"] == "Call CA7"
