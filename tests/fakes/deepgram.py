"""A fake Deepgram live server: a real WebSocket server on 127.0.0.1, port 0, scripted "recogniser".

It speaks the documented protocol (https://developers.deepgram.com/reference/speech-to-text-api/listen-streaming):

* handshake: ``Authorization: Token <key>`` (HTTP 401 otherwise); raw audio needs ``encoding``
  and ``sample_rate`` (HTTP 400 otherwise); ``channels`` / ``multichannel`` honoured;
* binary frames: interleaved mu-law audio; received time is tracked per connection;
* text frames ``KeepAlive`` (resets the idle timer), ``Finalize`` (flushes heard words as a final
  with ``from_finalize: true``), ``CloseStream`` (flushes finals, sends ``Metadata``, closes 1000);
* closes with 1011 ``NET-0001`` after ``idle_timeout_s`` without audio;
* ``Results`` in Deepgram's shape; ``UtteranceEnd`` after a speech final when ``utterance_end_ms``
  is set.

The recogniser does not listen: it follows a script of :class:`Turn` (channel, start, end, text in
call seconds). A connection finds where in the call its audio starts by looking its first bytes
up in ``reference`` (the call's interleaved audio; offset 0 without one), so a reconnect that
replays from the middle of a call is "heard" right. Result times are relative to the start of
the connection's audio, like Deepgram's. Interims grow word by word as audio passes through a
turn; the final (``speech_final``) comes once audio passes ``end + endpointing_s``; a channel
silent for ``silence_final_s`` gets an empty final, as Deepgram sends.

Load mode (``load=LoadScript(...)``, for ``benchmarks/load.py``): no script; results at a steady
rate and marker packets answered at once (:mod:`tests.fakes.load_recogniser`); an empty binary
frame (the old way to close a stream, which the 2022 tutorial uses) acts as ``CloseStream``.
``GET /stats`` (any mode) answers JSON ``{"connections": [{"markers", "finals", "interims",
"audio_bytes", "closed"}]}`` for a harness in another process.

Fault injection: ``drop_after_s`` (close 1011 after that much audio, on the first
``drop_connections`` connections), ``reject_with`` (HTTP status per connection attempt, in order).
Every connection's query, headers, control messages and results are recorded in ``connections``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from tests.fakes.load_recogniser import LoadRecogniser, LoadScript, Result


@dataclass(frozen=True)
class Turn:
    """One scripted utterance: ``channel`` 0/1, ``start_s``/``end_s`` in call seconds, ``text``."""

    channel: int
    start_s: float
    end_s: float
    text: str


def turns_from_json(path: Path) -> list[Turn]:
    """Turns of a recording's ``tests/data/<name>.json`` (caller → channel 0, callee → channel 1)."""
    data = json.loads(path.read_text())
    names = data.get("channels") or ["caller"]
    return [
        Turn(
            names.index(t["speaker"]) if t.get("speaker") in names else 0,
            t["start"],
            t["end"],
            t["text"],
        )
        for t in data["turns"]
    ]


@dataclass
class ConnectionRecord:
    """What one connection saw: query params, headers, control message types, results sent."""

    query: dict[str, str]
    headers: dict[str, str]
    controls: list[str] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    audio_bytes: int = 0
    offset_s: float = 0.0
    close_code: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    markers: list[int] = field(default_factory=list)
    finals: int = 0
    interims: int = 0
    opened_at: float = field(default_factory=time.time)  # wall clock, s (handshake done)


@dataclass
class _Word:
    word: str
    punctuated: str
    start_s: float
    end_s: float


class _ChannelState:
    def __init__(self, turns: list[Turn], offset_s: float) -> None:
        self.turns = [t for t in turns if t.end_s > offset_s]
        self.final_until_s = 0.0  # connection time covered by finals
        self.heard = 0  # words of the current turn already sent in an interim


def _words(turn: Turn) -> list[_Word]:
    parts = turn.text.split()
    step = (turn.end_s - turn.start_s) / max(len(parts), 1)
    return [
        _Word(
            p.strip(".,?!;:").lower(), p, turn.start_s + i * step, turn.start_s + (i + 0.9) * step
        )
        for i, p in enumerate(parts)
    ]


class FakeDeepgram:
    """Run with ``async with FakeDeepgram(script) as dg:``; point the client at ``dg.url``."""

    def __init__(
        self,
        script: list[Turn],
        *,
        api_key: str = "test-key",
        reference: bytes | None = None,
        idle_timeout_s: float = 10.0,
        endpointing_s: float = 0.1,
        silence_final_s: float = 1.0,
        drop_after_s: float | None = None,
        drop_connections: int = 1,
        reject_with: list[int] | None = None,
        load: LoadScript | None = None,
    ) -> None:
        self.script = sorted(script, key=lambda t: t.start_s)
        self.api_key = api_key
        self.reference = reference
        self.idle_timeout_s = idle_timeout_s
        self.endpointing_s = endpointing_s
        self.silence_final_s = silence_final_s
        self.drop_after_s = drop_after_s
        self.drop_connections = drop_connections
        self.reject_with = list(reject_with or [])
        self.load = load
        self.attempts = 0
        self.connections: list[ConnectionRecord] = []
        self._server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeDeepgram:
        self._server = await serve(
            self._handler, "127.0.0.1", 0, process_request=self._check, compression=None
        )
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}/v1/listen"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def stats(self) -> dict[str, Any]:
        """Per connection, in order: marker numbers heard, finals and interims sent, audio bytes."""
        return {
            "connections": [
                {
                    "markers": r.markers,
                    "finals": r.finals,
                    "interims": r.interims,
                    "audio_bytes": r.audio_bytes,
                    "closed": r.closed.is_set(),
                    "opened_at": r.opened_at,
                }
                for r in self.connections
            ]
        }

    def _check(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == "/stats":
            response = connection.respond(HTTPStatus.OK, json.dumps(self.stats()))
            response.headers["Content-Type"] = "application/json"
            return response
        self.attempts += 1
        if self.reject_with:
            status = self.reject_with.pop(0)
            return connection.respond(HTTPStatus(status), f"rejected with {status}\n")
        if request.headers.get("Authorization") != f"Token {self.api_key}":
            return connection.respond(HTTPStatus.UNAUTHORIZED, "INVALID_AUTH\n")
        query = dict(parse_qsl(urlsplit(request.path).query))
        if "encoding" not in query or "sample_rate" not in query:
            return connection.respond(
                HTTPStatus.BAD_REQUEST, "raw audio needs encoding and sample_rate\n"
            )
        return None

    async def _handler(self, ws: ServerConnection) -> None:
        request = ws.request
        assert request is not None
        query = dict(parse_qsl(urlsplit(request.path).query))
        record = ConnectionRecord(query=query, headers=dict(request.headers.raw_items()))
        self.connections.append(record)
        session = _Session(self, ws, record, len(self.connections))
        try:
            await session.serve()
        except ConnectionClosed:
            pass
        finally:
            record.close_code = ws.close_code
            record.closed.set()


class _Session:
    def __init__(
        self, fake: FakeDeepgram, ws: ServerConnection, record: ConnectionRecord, number: int
    ) -> None:
        q = record.query
        self.fake = fake
        self.ws = ws
        self.record = record
        self.channels = int(q.get("channels", "1"))
        self.multichannel = q.get("multichannel", "false") == "true"
        self.interim = q.get("interim_results", "false") == "true"
        self.punctuate = q.get("punctuate", "false") == "true"
        self.utterance_end = "utterance_end_ms" in q
        self.drop_after_s = fake.drop_after_s if number <= fake.drop_connections else None
        self.request_id = str(uuid.uuid4())
        self.states: list[_ChannelState] = []
        self.pos_s = 0.0  # connection audio time received
        self.load = (
            LoadRecogniser(
                fake.load, self.channels if self.multichannel else 1, interim=self.interim
            )
            if fake.load is not None
            else None
        )

    async def serve(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.fake.idle_timeout_s):
                    msg = await self.ws.recv()
            except TimeoutError:
                await self._close(CloseCode.INTERNAL_ERROR, "NET-0001")
                return
            if isinstance(msg, bytes) and self.load is not None:
                if not msg:  # the deprecated close: flush, Metadata, close
                    await self._load_send(self.load.flush())
                    await self.ws.send(json.dumps(self._metadata()))
                    await self._close(CloseCode.NORMAL_CLOSURE, "")
                    return
                self.record.audio_bytes += len(msg)
                await self._load_send(self.load.audio(msg))
                self.pos_s = self.load.pos_s
                continue
            if isinstance(msg, bytes):
                await self._audio(msg)
                if self.drop_after_s is not None and self.pos_s >= self.drop_after_s:
                    await self._close(CloseCode.INTERNAL_ERROR, "NET-0001 dropped by fault injection")
                    return
                continue
            kind = json.loads(msg).get("type", "")
            self.record.controls.append(kind)
            if kind == "Finalize":
                await self._flush(from_finalize=True)
            elif kind == "CloseStream" and self.load is not None:
                await self._load_send(self.load.flush())
                await self.ws.send(json.dumps(self._metadata()))
                await self._close(CloseCode.NORMAL_CLOSURE, "")
                return
            elif kind == "CloseStream":
                await self._flush(from_finalize=False)
                await self.ws.send(json.dumps(self._metadata()))
                await self._close(CloseCode.NORMAL_CLOSURE, "")
                return

    async def _load_send(self, results: list[Result]) -> None:
        """Send load-mode results, counting them in the connection's record."""
        assert self.load is not None
        for ch, start_s, end_s, words, is_final in results:
            await self._send(
                ch, start_s, end_s, [_Word(w, w, ws, we) for w, ws, we in words],
                is_final=is_final, speech_final=is_final,
            )  # fmt: skip
        self.record.markers = self.load.markers
        self.record.finals = self.load.finals
        self.record.interims = self.load.interims

    async def _close(self, code: CloseCode, reason: str) -> None:
        """Close, reading what the client still sends so its close frame is seen."""

        async def drain() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self.ws.recv()

        drainer = asyncio.create_task(drain())
        try:
            await self.ws.close(code, reason)
        finally:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer

    def _start(self, first: bytes) -> None:
        offset = 0.0
        ref = self.fake.reference
        if ref is not None:
            idx = ref.find(first[: min(len(first), 400)])
            if idx >= 0 and idx % self.channels == 0:
                offset = idx / (8000 * self.channels)
        self.record.offset_s = offset
        lanes = self.channels if self.multichannel else 1
        self.states = [
            _ChannelState(
                [t for t in self.fake.script if (t.channel if self.multichannel else 0) == c],
                offset,
            )
            for c in range(lanes)
        ]

    async def _audio(self, data: bytes) -> None:
        if not self.states:
            self._start(data)
        self.record.audio_bytes += len(data)
        self.pos_s = self.record.audio_bytes / (8000 * self.channels)
        for ch, st in enumerate(self.states):
            await self._advance(ch, st)

    async def _advance(self, ch: int, st: _ChannelState) -> None:
        off = self.record.offset_s
        call_pos = off + self.pos_s
        while st.turns:
            turn = st.turns[0]
            if call_pos >= turn.end_s + self.fake.endpointing_s:
                words = [w for w in _words(turn) if w.start_s >= off]
                await self._final(
                    ch, st, words, turn.end_s + self.fake.endpointing_s - off, speech_final=True
                )
                st.turns.pop(0)
                continue
            if call_pos >= turn.start_s:
                words = [w for w in _words(turn) if off <= w.start_s < call_pos]
                if self.interim and len(words) > st.heard:
                    st.heard = len(words)
                    await self._send(ch, st.final_until_s, self.pos_s, words, is_final=False)
                return
            break
        if self.pos_s - st.final_until_s >= self.fake.silence_final_s:
            end = self.pos_s
            if st.turns:
                end = min(end, st.turns[0].start_s - off)
            if end > st.final_until_s:
                await self._final(ch, st, [], end, speech_final=False)

    async def _final(
        self,
        ch: int,
        st: _ChannelState,
        words: list[_Word],
        end_s: float,
        *,
        speech_final: bool,
        from_finalize: bool = False,
    ) -> None:
        await self._send(
            ch,
            st.final_until_s,
            end_s,
            words,
            is_final=True,
            speech_final=speech_final and bool(words),
            from_finalize=from_finalize,
        )
        st.final_until_s = end_s
        st.heard = 0
        if self.utterance_end and words:
            last = words[-1].end_s - self.record.offset_s
            await self.ws.send(
                json.dumps(
                    {
                        "type": "UtteranceEnd",
                        "channel": [ch, len(self.states)],
                        "last_word_end": round(last, 3),
                    }
                )
            )

    async def _flush(self, *, from_finalize: bool) -> None:
        off = self.record.offset_s
        call_pos = off + self.pos_s
        for ch, st in enumerate(self.states):
            if st.turns and st.turns[0].start_s <= call_pos:
                words = [w for w in _words(st.turns.pop(0)) if off <= w.start_s < call_pos]
                await self._final(
                    ch, st, words, self.pos_s, speech_final=True, from_finalize=from_finalize
                )

    async def _send(
        self,
        ch: int,
        start_s: float,
        end_s: float,
        words: list[_Word],
        *,
        is_final: bool,
        speech_final: bool = False,
        from_finalize: bool = False,
    ) -> None:
        off = self.record.offset_s
        text = " ".join(w.punctuated if self.punctuate else w.word for w in words)
        lanes = self.load.channels if self.load is not None else len(self.states)
        msg = {
            "type": "Results",
            "channel_index": [ch, lanes],
            "duration": round(end_s - start_s, 3),
            "start": round(start_s, 3),
            "is_final": is_final,
            "speech_final": speech_final,
            "channel": {
                "alternatives": [
                    {
                        "transcript": text,
                        "confidence": 0.98 if words else 0.0,
                        "words": [
                            {
                                "word": w.word,
                                "start": round(w.start_s - off, 3),
                                "end": round(w.end_s - off, 3),
                                "confidence": 0.98,
                                **({"punctuated_word": w.punctuated} if self.punctuate else {}),
                            }
                            for w in words
                        ],
                    }
                ]
            },
            "metadata": {
                "request_id": self.request_id,
                "model_info": {
                    "name": "2-phonecall-nova",
                    "version": "2024-01-01.0",
                    "arch": "nova-2",
                },
                "model_uuid": "00000000-0000-0000-0000-000000000000",
            },
            "from_finalize": from_finalize,
        }
        if self.load is None:  # load mode keeps counts, not every result
            self.record.results.append(msg)
        await self.ws.send(json.dumps(msg))

    def _metadata(self) -> dict[str, Any]:
        return {
            "type": "Metadata",
            "transaction_key": "deprecated",
            "request_id": self.request_id,
            "sha256": "0" * 64,
            "created": "2024-01-01T00:00:00.000Z",
            "duration": round(self.pos_s, 3),
            "channels": self.channels,
            "models": ["00000000-0000-0000-0000-000000000000"],
            "model_info": {},
        }


async def wait_closed(fake: FakeDeepgram, timeout_s: float = 2.0) -> None:
    """Wait until every connection's server handler has finished (so records are complete)."""
    async with asyncio.timeout(timeout_s):
        for record in fake.connections:
            await record.closed.wait()
