"""``callscribe calls`` and ``callscribe transcript``: the gateway's REST from the terminal.

``calls`` asks ``GET /v1/calls`` with filters (a ``history_page``: docs/protocol.md, "Call
history and search") and prints one line per call, newest first; ``transcript`` fetches
``GET /v1/calls/{sid}/transcript?format=…`` and prints it as the gateway renders it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import aiohttp


class RestError(Exception):
    """The gateway could not be reached or refused the request (message for the user)."""


def http_base(url: str) -> str:
    """``ws://h:8080/v1/ws`` or ``http://h:8080/`` → ``http://h:8080``.

    Raises:
        RestError: not an http(s) or ws(s) URL.
    """
    scheme, sep, rest = url.partition("://")
    scheme = {"ws": "http", "wss": "https"}.get(scheme.lower(), scheme.lower())
    if not sep or scheme not in ("http", "https") or not rest:
        raise RestError(f"--gateway: not an http:// URL: {url!r}")
    return f"{scheme}://{rest.split('/', 1)[0]}"


async def fetch(
    base: str, path: str, params: dict[str, str], timeout_s: float, token: str | None = None
) -> tuple[str, Any]:
    """GET ``base + path`` (with ``Authorization: Bearer <token>`` when given): ``(text,
    parsed JSON or None)``.

    Raises:
        RestError: unreachable, or an error answer (its ``message``).
    """
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session,
            session.get(base + path, params=params, headers=headers) as resp,
        ):
            text = await resp.text()
            body = await _json(resp, text)
            if resp.status != 200:
                why = body.get("message") if isinstance(body, dict) else text[:200]
                raise RestError(f"{base + path}: HTTP {resp.status}: {why}")
            return text, body
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise RestError(f"cannot reach the gateway at {base} ({exc.__class__.__name__})") from None


async def _json(resp: aiohttp.ClientResponse, text: str) -> Any:
    if "json" not in resp.content_type:
        return None
    try:
        return await resp.json()
    except ValueError:
        return None


@dataclass
class CallsQuery:
    """``callscribe calls`` filters (see ``GET /v1/calls``); empty strings are left out."""

    status: str = ""
    number: str = ""
    from_: str = ""
    to: str = ""
    q: str = ""
    cursor: str = ""
    limit: int = 20

    def params(self) -> dict[str, str]:
        """The query string (always a history query: ``limit`` is set)."""
        raw = {
            "status": self.status, "number": self.number, "from": self.from_, "to": self.to,
            "q": self.q, "cursor": self.cursor, "limit": str(self.limit),
        }  # fmt: skip
        return {k: v for k, v in raw.items() if v}


def _mmss(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"
        if s >= 3600
        else f"{s // 60:02d}:{s % 60:02d}"
    )


def print_calls(page: dict[str, Any], out: TextIO) -> None:
    """One line per call: start, status, duration, finals, from → to, sid, failure."""
    calls = page.get("calls") or []
    if not calls:
        print("no calls match", file=out)
    for c in calls:
        failure = f"  ! {c['failure']}" if c.get("failure") else ""
        print(
            f"{c.get('started', '')[:19].replace('T', ' ')}Z  {c.get('status', ''):6}  "
            f"{_mmss(c.get('duration_s') or 0):>7}  {c.get('finals', 0):4d} finals  "
            f"{c.get('from') or '-'} → {c.get('to') or '-'}  {c['call_sid']}{failure}",
            file=out,
        )
    if page.get("next_cursor"):
        print(f"more: --cursor {page['next_cursor']}", file=out)


def _cmd_calls(args: argparse.Namespace) -> int:
    query = CallsQuery(
        status=args.status or "", number=args.number or "", from_=args.from_ or "",
        to=args.to or "", q=args.q or "", cursor=args.cursor or "", limit=args.limit,
    )  # fmt: skip
    try:
        base = http_base(args.gateway)
        _, page = asyncio.run(fetch(base, "/v1/calls", query.params(), args.timeout_s, args.token))
    except RestError as exc:
        print(f"callscribe calls: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(page, indent=1))
    else:
        print_calls(page, sys.stdout)
    return 0


def _cmd_transcript(args: argparse.Namespace) -> int:
    try:
        base = http_base(args.gateway)
        path = f"/v1/calls/{args.call_sid}/transcript"
        text, _ = asyncio.run(fetch(base, path, {"format": args.format}, args.timeout_s, args.token))
    except RestError as exc:
        print(f"callscribe transcript: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def add_rest_commands(sub: Any) -> None:
    """Add ``calls`` and ``transcript`` to the ``callscribe`` subparsers ``sub``."""
    calls = sub.add_parser(
        "calls",
        help="list recent calls (live and ended), filter and search them",
        description="Recent calls through the gateway's GET /v1/calls, newest first: queued, "
        "live and ended, with numbers, start, duration, finals, status and failure.",
    )
    calls.add_argument("--status", choices=("queued", "live", "ended"), help="only this status")
    calls.add_argument("--number", help="part of the caller's or callee's number")
    calls.add_argument(
        "--from", dest="from_", metavar="TIME", help="started at or after (ISO 8601 or Unix s)"
    )
    calls.add_argument("--to", metavar="TIME", help="started at or before (ISO 8601 or Unix s)")
    calls.add_argument("-q", "--search", dest="q", metavar="WORDS", help="words the transcript has")
    calls.add_argument("--cursor", help="continue after a previous page (printed as 'more:')")
    calls.add_argument("--limit", type=int, default=20, help="calls per page (20)")
    calls.add_argument("--json", action="store_true", help="print the page as JSON")
    _gateway_options(calls)
    calls.set_defaults(func=_cmd_calls)

    tr = sub.add_parser(
        "transcript",
        help="print a call's transcript as text, JSON, WebVTT or SRT",
        description="Export a call's transcript (live or ended, while retained) through the "
        "gateway's GET /v1/calls/CALL_SID/transcript?format=...",
    )
    tr.add_argument("call_sid", metavar="CALL_SID", help="the call")
    tr.add_argument("--format", choices=("txt", "json", "vtt", "srt"), default="txt")
    _gateway_options(tr)
    tr.set_defaults(func=_cmd_transcript)


def _gateway_options(parser: Any) -> None:
    """``--gateway``, ``--timeout-s`` and ``--token``, shared by the REST commands."""
    parser.add_argument("--gateway", default="http://127.0.0.1:8080", help="gateway base URL")
    parser.add_argument("--timeout-s", type=float, default=10.0, help="request timeout (s)")
    parser.add_argument(
        "--token",
        default=os.environ.get("CALLSCRIBE_TOKEN"),
        help="bearer token for the gateway (callscribe token); default $CALLSCRIBE_TOKEN",
    )
