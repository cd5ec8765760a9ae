"""Load benchmark: K Twilio calls × S watchers through callscribe and the tutorial, one machine.

Everything runs here as separate processes: redis-server, a fake Deepgram (load mode: an interim
per channel about every 1 s and a final about every 3 s of audio; marker packets answered at
once), callscribe's ingest, ``--transcribers`` transcribers and ``--gateways`` gateways (watchers
spread over them), and one load-generator process (this one) that plays ``--calls`` calls started
evenly over ``--ramp`` s, each ``--duration`` s of both tracks at real-time pace in Twilio's
Media Streams messages, with ``--watchers`` watchers per call (a mix of ``/client`` and
``/v1/ws``). Latency runs from the send of a marker packet to a watcher receiving the transcript
that carries it. Then the same load runs against the tutorial server
(``benchmarks/baseline/tutorial_server.py``, its own venv, all watchers on ``/client``) and both
are printed side by side. ``--sweep`` finds the knee: the largest K that keeps up.

Run: ``.venv/bin/python benchmarks/load.py --calls 200 --watchers 10``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen.report import table  # noqa: E402
from benchmarks.loadgen.run import RunConfig, run_system  # noqa: E402
from benchmarks.loadgen.tutorial import tutorial_python  # noqa: E402


def run_once(cfg: RunConfig, *, tutorial: bool, logs: Path) -> dict[str, dict[str, Any]]:
    """callscribe, then (if ``tutorial``) the tutorial, under ``cfg``; ``system → figures``."""
    runs = {"callscribe": run_system(cfg, "callscribe", logs)}
    if tutorial:
        runs["tutorial"] = run_system(cfg, "tutorial", logs, tutorial_python())
    return runs


def sweep(
    cfg: RunConfig, system: str, logs: Path, *, start: int, limit: int, python: Path | None
) -> dict[str, Any]:
    """The knee of ``system``: double K from ``start`` until a run does not keep up, then bisect.

    Returns ``{"knee": K or 0, "bounded": False when even ``limit`` kept up, "runs": [{"calls",
    "keeps_up", "p99", "reasons"}]}``.
    """
    tried: list[dict[str, Any]] = []

    def ok(k: int) -> bool:
        fig = run_system(RunConfig(**{**cfg.as_dict(), "calls": k}), system, logs, python)
        v = fig["verdict"]
        tried.append({"calls": k, "keeps_up": v["keeps_up"], "p99": fig["latency_ms"]["p99"],
                      "reasons": v["reasons"]})  # fmt: skip
        print(f"{system}: {k} calls × {cfg.watchers}: "
              f"{'keeps up' if v['keeps_up'] else 'behind: ' + '; '.join(v['reasons'])}",
              file=sys.stderr, flush=True)  # fmt: skip
        return bool(v["keeps_up"])

    good, bad, k = 0, 0, start
    while k <= limit:
        if not ok(k):
            bad = k
            break
        good, k = k, k * 2
    while bad and bad - good > max(2, good // 10):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return {"knee": good, "bounded": bool(bad), "runs": tried}


MATRIX = [(50, 1), (50, 10), (200, 1), (200, 10), (400, 1), (400, 10)]
"""The (calls, watchers per call) loads of the README's table."""


def matrix(cfg: RunConfig, logs: Path, *, tutorial: bool) -> dict[str, Any]:
    """Run every load of :data:`MATRIX` on both systems; print and return a Markdown table."""
    rows = []
    lines = [
        "| load | callscribe p50 / p99 ms | lost | CPU core-s per call-s | "
        "tutorial p50 / p99 ms | lost | CPU core-s per call-s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for calls, watchers in MATRIX:
        runs = run_once(
            RunConfig(**{**cfg.as_dict(), "calls": calls, "watchers": watchers}),
            tutorial=tutorial,
            logs=logs,
        )
        rows.append({"calls": calls, "watchers": watchers, "runs": runs})
        cells = [f"{calls} × {watchers}"]
        for system in ("callscribe", "tutorial"):
            fig = runs.get(system)
            if fig is None:
                cells += ["–", "–", "–"]
                continue
            lat = fig["latency_ms"]
            cells.append(f"{_ms(lat['p50'])} / {_ms(lat['p99'])}")
            cells.append(str(fig["finals"]["lost"]))
            cells.append(f"{fig['cpu_system_per_call_s']:.4f}")
        lines.append("| " + " | ".join(cells) + " |")
        print(lines[-1], file=sys.stderr, flush=True)
    text = "\n".join(lines)
    print(text)
    return {"matrix": rows, "table": text}


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse the options, run, print the table (or the sweep); the JSON figures."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=50, help="calls K (sweep: the first K)")
    p.add_argument("--watchers", type=int, default=10, help="watchers per call S")
    p.add_argument("--duration", type=float, default=40.0, help="length of each call, s")
    p.add_argument("--ramp", type=float, default=10.0, help="calls start evenly over this, s")
    p.add_argument("--transcribers", type=int, default=1)
    p.add_argument("--gateways", type=int, default=1)
    p.add_argument("--client-share", type=float, default=0.5,
                   help="share of callscribe's watchers on /client (the rest on /v1/ws)")  # fmt: skip
    p.add_argument("--marker-every", type=float, default=2.0, help="s between a call's markers")
    p.add_argument("--max-calls", type=int, default=0, help="MAX_CALLS (0: 2 × calls, ≥ 100)")
    p.add_argument("--tutorial", action=argparse.BooleanOptionalAction, default=True,
                   help="also run the tutorial server under the same load")  # fmt: skip
    p.add_argument("--sweep", action="store_true", help="find the knee (largest K that keeps up)")
    p.add_argument("--sweep-limit", type=int, default=1600, help="largest K the sweep tries")
    p.add_argument("--matrix", action="store_true",
                   help="the README's table: 50, 200, 400 calls × 1 and × 10 watchers")  # fmt: skip
    p.add_argument("--json", metavar="PATH", help="also write the figures as JSON ('-': stdout)")
    p.add_argument("--logs", metavar="DIR", help="keep the processes' logs here")
    a = p.parse_args(argv)
    cfg = RunConfig(
        calls=a.calls, watchers=a.watchers, duration_s=a.duration, ramp_s=a.ramp,
        transcribers=a.transcribers, gateways=a.gateways, client_share=a.client_share,
        marker_every_s=a.marker_every, max_calls=a.max_calls,
    )  # fmt: skip
    logs = Path(a.logs) if a.logs else Path(tempfile.mkdtemp(prefix="cs-load-"))
    out: dict[str, Any]
    if a.matrix:
        out = matrix(cfg, logs, tutorial=a.tutorial)
    elif a.sweep:
        python = tutorial_python() if a.tutorial else None
        systems = ["callscribe", *(["tutorial"] if a.tutorial else [])]
        out = {"sweep": {s: sweep(cfg, s, logs, start=a.calls, limit=a.sweep_limit,
                                  python=python) for s in systems}}  # fmt: skip
        for s, res in out["sweep"].items():
            print(f"knee of {s}: {'' if res['bounded'] else '≥ '}{res['knee']} calls × {cfg.watchers} watchers "
                  f"({cfg.duration_s:.0f} s calls over a {cfg.ramp_s:.0f} s ramp)")  # fmt: skip
    else:
        out = run_once(cfg, tutorial=a.tutorial, logs=logs)
        print(f"{cfg.calls} calls × {cfg.watchers} watchers, {cfg.duration_s:g} s each, "
              f"started over {cfg.ramp_s:g} s; {cfg.transcribers} transcriber(s), "
              f"{cfg.gateways} gateway(s); logs in {logs}")  # fmt: skip
        print(table(out))
    if a.json:
        text = json.dumps(out, indent=2)
        if a.json == "-":
            print(text)
        else:
            Path(a.json).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
