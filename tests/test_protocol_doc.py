"""docs/protocol.md describes every Redis key of shared/keys.py and every message field of shared/schema.py.

The keys and models are discovered from the modules, not listed here, so a key or a field added
to the code without its line in the doc fails these tests.
"""

from __future__ import annotations

import inspect
import json
import re
import typing
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel

from shared import keys, schema
from shared.schema import AudioFrame, CallMeta, TranscriptEvent, WorkerHealth
from tests.recordings import ROOT

DOC = ROOT / "docs" / "protocol.md"

_ANY = "\x00"
"""Stands for a key function's argument; the doc writes it as a name (``sid`` in
``cs:{p}:sid:meta``) or a name in angle brackets (``cs:worker:<consumer>``); the partition
tag of a per-call key is written ``{p}`` (any name in braces)."""


# --------------------------------------------------------------------------- discovery

NOT_KEYS = {"tag_of", "sid_of"}
"""Functions of :mod:`shared.keys` that compute a partition or parse a key rather than name one."""


def key_patterns() -> dict[str, re.Pattern[str]]:
    """Every key, key prefix and group name in :mod:`shared.keys`, as a pattern the doc must match.

    Constants must appear at the start of a code span; functions are called with a placeholder
    argument, which the doc may write as any ``{…}`` or ``<…>`` name.
    """
    out: dict[str, re.Pattern[str]] = {}
    for name, value in vars(keys).items():
        if name.startswith("_"):
            continue
        if isinstance(value, str):
            out[name] = re.compile("`" + re.escape(value))
        elif name in NOT_KEYS:
            continue
        elif inspect.isfunction(value) and value.__module__ == keys.__name__:
            args = [_ANY] * len(inspect.signature(value).parameters)
            produced = value(*args)
            for i, key in enumerate(produced if isinstance(produced, tuple) else (produced,)):
                key = key.replace("{" + keys.tag_of(_ANY) + "}", "{" + _ANY + "}")
                body = re.escape(key).replace(re.escape(_ANY), r"(?:\w+|<\w+>)")
                out[f"{name}[{i}]"] = re.compile("`" + body + "`")
    return out


def _literal(model: type[BaseModel]) -> str | None:
    """The value of a model's ``type: Literal[...]`` field, None when it has none."""
    field = model.model_fields.get("type")
    if field is None:
        return None
    values = typing.get_args(field.annotation)
    return values[0] if len(values) == 1 and isinstance(values[0], str) else None


def message_models() -> list[type[BaseModel]]:
    """The models of :mod:`shared.schema` that are JSON messages of ours (they have a ``type``)."""
    return [
        m
        for _, m in inspect.getmembers(schema, inspect.isclass)
        if issubclass(m, BaseModel) and m.__module__ == schema.__name__ and _literal(m)
    ]


def _nested(annotation: Any) -> Iterator[type[BaseModel]]:
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        yield annotation
    for arg in typing.get_args(annotation):
        yield from _nested(arg)


def documented_units(models: Iterable[type[BaseModel]]) -> list[tuple[str, list[str]]]:
    """``(heading mark, field names)`` for each message and each model nested in one.

    A message's section is the heading that names its ``type`` in a code span; a nested model's
    (``CallMeta``, ``Word``) the one that names its class.
    """
    units: list[tuple[str, list[str]]] = []
    seen: set[type[BaseModel]] = set()
    queue = [(m, f"`{_literal(m)}`") for m in models]
    while queue:
        model, mark = queue.pop(0)
        if model in seen:
            continue
        seen.add(model)
        units.append((mark, [f.alias or n for n, f in model.model_fields.items()]))
        for field in model.model_fields.values():
            queue += [(n, f"`{n.__name__}`") for n in _nested(field.annotation) if n is not model]
    return units


def redis_records() -> list[tuple[str, list[str]]]:
    """``(heading mark, Redis field names)`` of each record the models encode for Redis."""
    meta = CallMeta(call_sid="CA1", ended_at=1.0).to_redis()
    frame = AudioFrame(t_ms=0, pcmu=b"\xff").to_redis()
    eof = AudioFrame(t_ms=0, eof=True).to_redis()
    final = TranscriptEvent(
        call_sid="CA1", segment=0, channel=0, speaker="caller", is_final=True,
        start=0.0, end=1.0, text="hi",
    ).to_history()  # fmt: skip
    health = json.loads(WorkerHealth(calls=0, ts=0.0).to_redis())
    return [
        (f"`{doc_key(keys.meta('<sid>'))}`", list(meta)),
        (f"`{doc_key(keys.audio('<sid>'))}`", sorted({*frame, *eof})),
        (f"`{doc_key(keys.transcript('<sid>'))}`", list(final)),
        (f"`{keys.worker('<consumer>')}`", list(health)),
    ]


def doc_key(key: str) -> str:
    """A per-call key as the doc writes it: its partition's hash tag as ``{p}``."""
    sid = keys.sid_of(key)
    return key.replace("{" + keys.tag_of(sid) + "}", "{p}")


# --------------------------------------------------------------------------- checks


def _heading_level(line: str) -> int:
    """1 for ``# …``, 2 for ``## …`` and so on; 0 for a line that is not a heading."""
    level = len(line) - len(line.lstrip("#"))
    return level if level and line[level : level + 1] == " " else 0


def sections(markdown: str, mark: str) -> str:
    """The text of every section whose heading contains ``mark``, subsections included."""
    lines = markdown.splitlines()
    out: list[str] = []
    for start, line in enumerate(lines):
        level = _heading_level(line)
        if not level or mark not in line:
            continue
        end = start + 1
        while end < len(lines) and not 0 < _heading_level(lines[end]) <= level:
            end += 1
        out += lines[start:end]
    return "\n".join(out)


def missing_keys(markdown: str) -> list[str]:
    """The keys of :mod:`shared.keys` that ``markdown`` never names."""
    return [name for name, pattern in key_patterns().items() if not pattern.search(markdown)]


def missing_fields(markdown: str, units: Iterable[tuple[str, list[str]]]) -> list[str]:
    """``"<mark>.<field>"`` for each field not named (in a code span) in its unit's section."""
    missing = []
    for mark, fields in units:
        text = sections(markdown, mark)
        if not text:
            missing.append(f"{mark} (no section)")
            continue
        missing += [f"{mark}.{f}" for f in fields if f"`{f}`" not in text]
    return missing


# --------------------------------------------------------------------------- the tests


def test_every_redis_key_is_documented() -> None:
    """Each key, prefix and group name of shared/keys.py appears in docs/protocol.md."""
    patterns = key_patterns()
    assert {"active[0]", "jobs[0]", "JOBS_GROUP", "meta[0]", "live[0]", "worker[0]"} <= set(
        patterns
    )
    assert missing_keys(DOC.read_text()) == []


def test_every_event_and_client_message_field_is_documented() -> None:
    """Each message model's fields (and those of CallMeta, Word) are named in its own section."""
    models = message_models()
    types = {_literal(m) for m in models}
    assert {"transcript", "call_started", "call_ended", "end", "error"} <= types
    assert {"list", "subscribe", "unsubscribe"} <= types
    assert {"calls", "subscribed", "unsubscribed", "audio_stopped"} <= types  # every reply has a model
    units = documented_units(models)
    assert {"`CallMeta`", "`Word`"} <= {mark for mark, _ in units}
    assert missing_fields(DOC.read_text(), units) == []



def test_redis_fields_of_each_record_are_documented() -> None:
    """The hash fields of the meta record, the stream fields of audio and history entries and
    the JSON fields of the worker health record."""
    assert missing_fields(DOC.read_text(), redis_records()) == []


def test_checks_fail_for_an_undocumented_field() -> None:
    """A field added to a model, or a field's line taken out of the doc, is reported."""

    class Extended(TranscriptEvent):
        sentiment: float = 0.0

    doc = DOC.read_text()
    assert missing_fields(doc, documented_units([Extended])) == ["`transcript`.sentiment"]
    without = doc.replace("`speech_final`", "speech_final")
    assert "`transcript`.speech_final" in missing_fields(
        without, documented_units(message_models())
    )
    assert missing_fields(doc, [("`no_such_event`", ["type"])]) == ["`no_such_event` (no section)"]


def test_checks_fail_for_an_undocumented_key() -> None:
    """A doc that never names the live channel is reported for keys.live."""
    doc = DOC.read_text().replace("`cs:{p}:<sid>:live`", "the live channel")
    assert missing_keys(doc) == ["live[0]"]
