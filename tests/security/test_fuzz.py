"""The fuzzers of issue 8 kept as bounded property tests: anything a stranger sends is accepted
or refused with the documented exception, never a crash (hypothesis, fixed example budget)."""

from __future__ import annotations

import contextlib
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.gateway.auth import Grant, Scope
from services.ingest.twilio import TwilioStream
from shared.errors import ClientMessageError, TwilioMessageError
from shared.schema import CallMeta, parse_client

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)
events = st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop", "x"])
messages = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    json_values.map(json.dumps),
    st.fixed_dictionaries(
        {"event": events}, optional={"start": json_values, "media": json_values}
    ).map(json.dumps),
)


@FUZZ
@given(st.lists(messages, max_size=12))
def test_any_twilio_input_is_accepted_or_refused_cleanly(feed: list[str | bytes]) -> None:
    """A stream fed anything raises only TwilioMessageError and ends cleanly."""
    stream = TwilioStream(frame_ms=100, reorder_ms=60, max_gap_ms=5000, silence_budget_ms=10_000)
    for raw in feed:
        with contextlib.suppress(TwilioMessageError):
            stream.feed(raw)
    stream.close("disconnect")


@FUZZ
@given(messages)
def test_any_client_message_is_accepted_or_refused_cleanly(raw: str | bytes) -> None:
    """parse_client raises only ClientMessageError."""
    with contextlib.suppress(ClientMessageError):
        parse_client(raw)


@FUZZ
@given(
    st.sampled_from(["all", "numbers", "call"]),
    st.frozensets(st.sampled_from(["+1", "+2", "+3"])),
    st.sampled_from(["CA1", "CA2"]),
    st.booleans(),
    st.sampled_from(["+1", "+2", "+3", ""]),
    st.sampled_from(["+1", "+2", "+3", ""]),
    st.sampled_from(["queued", "live", "ended"]),
)
def test_a_grant_never_shows_a_call_outside_its_scope(
    scope: str, numbers: frozenset[str], sid: str, history: bool, frm: str, to: str, status: str
) -> None:
    """Whatever the claims and the call, a grant sees a call only when the scope says so."""
    grant = Grant(subject="t", scope=Scope(scope), numbers=numbers, call_sid="CA1", history=history)
    meta = CallMeta(call_sid=sid, status=status, to=to, **{"from": frm})  # type: ignore[arg-type]
    seen = grant.sees(meta)
    if status == "ended" and not history:
        assert not seen
    elif scope == "call":
        assert seen == (sid == "CA1")
    elif scope == "numbers":
        assert seen == bool((frm and frm in numbers) or (to and to in numbers))
    else:
        assert seen
