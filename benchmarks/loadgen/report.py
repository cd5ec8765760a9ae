"""Figures of a load run (plain dicts, JSON-ready) and the table that puts systems side by side.

:func:`figures` turns what a run recorded into the figures; :func:`table` prints one or more
runs as columns. A run *keeps up* (:func:`verdict`) when marker latency p99 ≤ 500 ms, its p50
grows by no more than 100 ms from the first third of the run to the last, and nothing is lost:
every marker owed reached every watcher, every final the fake sent reached every watcher, no
frame was dropped, no call or watcher failed.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from benchmarks.loadgen.calls import MARKER_STRIDE, LoadCall
from benchmarks.loadgen.watchers import Watcher

P99_MAX_MS = 500.0
GROWTH_MAX_MS = 100.0
WINDOW_S = 10.0
HARNESS = ("loadgen", "fake")
"""Processes of the benchmark itself: reported, not counted in a system's total."""


def pct(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank), ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(int(q * len(ordered)), len(ordered) - 1)]


def latency(samples: list[tuple[float, float]], load_s: float) -> dict[str, Any]:
    """Figures of ``[(sent at s from load start, latency ms)]`` over a load of ``load_s`` s."""
    ms = [lat for _, lat in samples]
    third = load_s / 3
    first = [lat for t, lat in samples if t < third]
    last = [lat for t, lat in samples if t >= 2 * third]
    windows = []
    for k in range(int(load_s // WINDOW_S) + 1):
        part = [lat for t, lat in samples if k * WINDOW_S <= t < (k + 1) * WINDOW_S]
        if part:
            windows.append({"from_s": k * WINDOW_S, "p50": pct(part, 0.5), "n": len(part)})
    return {
        "n": len(ms),
        "p50": pct(ms, 0.5),
        "p90": pct(ms, 0.9),
        "p99": pct(ms, 0.99),
        "max": max(ms) if ms else None,
        "first_third_p50": pct(first, 0.5),
        "last_third_p50": pct(last, 0.5),
        "windows": windows,
    }


def figures(
    *,
    calls: list[LoadCall],
    watchers: list[Watcher],
    begin: float,
    load_s: float,
    call_seconds: float,
    cpu: dict[str, float],
    rss: dict[str, dict[str, float]],
    fake_stats: dict[str, Any],
    frames_dropped: int | None,
    tick_late_ms: list[float],
) -> dict[str, Any]:
    """The figures of one run (see the module docstring); times are loop times, ``cpu`` in CPU-s."""
    expected: dict[int, int] = {}
    opened: dict[int, float] = {}  # call index -> wall time its first ASR connection opened
    unattributed = 0
    # a connection that carried no audio is a transcriber's start-up probe, not a call's
    asr_conns = [c for c in fake_stats["connections"] if c.get("audio_bytes", 1)]
    for conn in asr_conns:
        owners = {m // MARKER_STRIDE for m in conn["markers"]}
        if len(owners) != 1:
            unattributed += 1
            continue
        owner = owners.pop()
        expected[owner] = expected.get(owner, 0) + conn["finals"]
        if "opened_at" in conn:
            opened[owner] = min(opened.get(owner, conn["opened_at"]), conn["opened_at"])
    asr_open_ms = [
        (at - calls[i].t0_wall) * 1000
        for i, at in opened.items()
        if i < len(calls) and calls[i].t0_wall is not None
    ]
    samples: list[tuple[float, float]] = []
    owed = missing = lost = extra = 0
    losing = []
    subscribe_ms = []
    for w in watchers:
        call = calls[w.call_index]
        if w.subscribed_at is None:
            continue
        if call.t0 is not None:
            subscribe_ms.append((w.subscribed_at - call.t0) * 1000)
        for number, sent in call.marker_sent.items():
            if sent < w.subscribed_at:
                continue
            owed += 1
            got = w.seen.get(number)
            if got is None:
                missing += 1
            else:
                samples.append((sent - begin, (got - sent) * 1000))
        short = expected.get(w.call_index, 0) - w.finals
        lost += max(short, 0)
        extra += max(-short, 0)
        if short > 0:
            losing.append(short)
    errors = [w.error for w in watchers if w.error]
    out = {
        "cpu_per_call_s": {name: s / call_seconds for name, s in cpu.items()},
        "cpu_system_per_call_s": sum(s for n, s in cpu.items() if n not in HARNESS) / call_seconds,
        "rss_mb": rss,
        "latency_ms": latency(samples, load_s),
        "markers": {"owed": owed, "missing": missing},
        "finals": {
            "sent": sum(expected.values()),
            "lost": lost,
            "lost_max_per_watcher": max(losing, default=0),
            "watchers_losing": len(losing),
            "extra": extra,
        },
        "frames_dropped": frames_dropped,
        "generator_late_ms": {
            "p99": pct(tick_late_ms, 0.99),
            "max": max(tick_late_ms, default=None),
        },
        "asr_connections": len(asr_conns),
        "asr_open_ms_p50": pct(asr_open_ms, 0.5),
        "asr_open_ms_max": max(asr_open_ms, default=None),
        "unattributed_connections": unattributed,
        "calls": {"total": len(calls), "errors": sum(1 for c in calls if c.error)},
        "watchers": {
            "total": len(watchers),
            "subscribed": sum(1 for w in watchers if w.subscribed_at is not None),
            "ended": sum(1 for w in watchers if w.ended),
            "errors": len(errors),
            "first_error": errors[0] if errors else None,
            "subscribe_ms_p50": pct(subscribe_ms, 0.5),
            "subscribe_ms_max": max(subscribe_ms, default=None),
        },
    }
    out["verdict"] = verdict(out)
    return out


def verdict(fig: dict[str, Any]) -> dict[str, Any]:
    """``{"keeps_up": bool, "reasons": [why not]}`` for one run's figures."""
    lat = fig["latency_ms"]
    reasons = []
    if lat["p99"] is None or lat["p99"] > P99_MAX_MS:
        reasons.append(f"p99 {lat['p99']} ms > {P99_MAX_MS:.0f}")
    first, last = lat["first_third_p50"], lat["last_third_p50"]
    if first is not None and last is not None and last - first > GROWTH_MAX_MS:
        reasons.append(f"p50 grew {first:.0f} → {last:.0f} ms")
    if fig["markers"]["missing"]:
        reasons.append(f"{fig['markers']['missing']} markers never seen")
    if fig["finals"]["lost"]:
        reasons.append(f"{fig['finals']['lost']} finals lost")
    if fig["frames_dropped"]:
        reasons.append(f"{fig['frames_dropped']} frames dropped")
    if fig["calls"]["errors"] or fig["watchers"]["errors"]:
        reasons.append(
            f"{fig['calls']['errors']} call / {fig['watchers']['errors']} watcher errors"
        )
    return {"keeps_up": not reasons, "reasons": reasons}


def _num(value: float | None, fmt: str = "{:.0f}") -> str:
    return "–" if value is None else fmt.format(value)


def table(runs: dict[str, dict[str, Any]]) -> str:
    """The runs (``system → figures``) as one table, a column per system."""
    names = list(runs)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, get: Any) -> None:
        rows.append((label, [get(runs[n]) for n in names]))

    def section(title: str) -> None:
        rows.append((f"## {title}", ["" for _ in names]))

    procs: list[str] = []
    for fig in runs.values():
        procs += [p for p in fig["cpu_per_call_s"] if p not in procs]
    section("CPU, core-seconds per call-second")
    for p in procs:
        row(f"  {p}", lambda f, p=p: _num(f["cpu_per_call_s"].get(p), "{:.5f}"))
    row("  system total (no harness)", lambda f: _num(f["cpu_system_per_call_s"], "{:.5f}"))
    row("  generator tick late, ms p99/max", lambda f: (
        f"{_num(f['generator_late_ms']['p99'])}/{_num(f['generator_late_ms']['max'])}"))  # fmt: skip
    section("RSS MB: idle / steady / after the calls")
    for p in procs:
        row(f"  {p}", lambda f, p=p: "/".join(
            _num(f["rss_mb"].get(p, {}).get(k)) for k in ("idle", "steady", "after")))  # fmt: skip
    section("Latency, ms: marker packet sent → watcher has it")
    for key in ("p50", "p90", "p99", "max"):
        row(f"  {key}", lambda f, k=key: _num(f["latency_ms"][k]))
    row("  samples", lambda f: str(f["latency_ms"]["n"]))
    row("  p50 first third → last third", lambda f: (
        f"{_num(f['latency_ms']['first_third_p50'])} → {_num(f['latency_ms']['last_third_p50'])}"))  # fmt: skip
    row(f"  p50 per {WINDOW_S:.0f} s window", lambda f: " ".join(
        _num(w["p50"]) for w in f["latency_ms"]["windows"]))  # fmt: skip
    section("Delivery")
    row(
        "  markers owed / never seen",
        lambda f: f"{f['markers']['owed']} / {f['markers']['missing']}",
    )
    row("  finals sent by the fake", lambda f: str(f["finals"]["sent"]))
    row("  finals lost (all watchers)", lambda f: str(f["finals"]["lost"]))
    row("  … most lost by one watcher", lambda f: str(f["finals"]["lost_max_per_watcher"]))
    row("  … watchers that lost any", lambda f: str(f["finals"]["watchers_losing"]))
    row("  finals received twice", lambda f: str(f["finals"]["extra"]))
    row("  frames dropped (ingest)", lambda f: _num(f["frames_dropped"]))
    row("  ASR connections", lambda f: str(f["asr_connections"]))
    row("  ASR session open after start, ms p50/max", lambda f: (
        f"{_num(f.get('asr_open_ms_p50'))}/{_num(f.get('asr_open_ms_max'))}"))  # fmt: skip
    row("  watchers subscribed / ended", lambda f: (
        f"{f['watchers']['subscribed']}/{f['watchers']['ended']} of {f['watchers']['total']}"))  # fmt: skip
    row("  subscribe after start, ms p50/max", lambda f: (
        f"{_num(f['watchers']['subscribe_ms_p50'])}/{_num(f['watchers']['subscribe_ms_max'])}"))  # fmt: skip
    row("  call / watcher errors", lambda f: f"{f['calls']['errors']} / {f['watchers']['errors']}")
    section("Verdict (p99 ≤ 500 ms, nothing lost, no growth)")
    row("  keeps up", lambda f: "yes" if f["verdict"]["keeps_up"] else "NO")
    width = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    label_w = max(len(label) for label, _ in rows)
    lines = [
        " " * label_w + "  " + "  ".join(n.rjust(w) for n, w in zip(names, width, strict=True))
    ]
    for label, values in rows:
        cells = "  ".join(v.rjust(w) for v, w in zip(values, width, strict=True))
        lines.append(label.ljust(label_w) + "  " + cells)
    for n in names:
        for reason in runs[n]["verdict"]["reasons"]:
            lines.append(f"{n}: {reason}")
        if runs[n]["watchers"]["first_error"]:
            lines.append(f"{n}: first watcher error: {runs[n]['watchers']['first_error']}")
    return "\n".join(lines)


def steady(samples: list[tuple[float, float]], lo: float, hi: float) -> float | None:
    """Median of the ``(time, value)`` samples with ``lo ≤ time ≤ hi``."""
    part = [v for t, v in samples if lo <= t <= hi]
    return statistics.median(part) if part else None
