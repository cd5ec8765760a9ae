"""What timestamp jitter does to the mixed audio, and what one packet costs the mixer.

Two figures, both through :class:`services.ingest.mixer.Mixer`'s public interface:

* **Holes and overwrites.** Each of two tracks sends ``--packets`` 20 ms packets (160 bytes of
  8 kHz mu-law), packet ``i`` stamped ``20 * i + j`` ms with ``j`` uniform in ``[-J, +J]`` (the
  first packet unjittered, as it anchors the track; seed ``--seed``), for J = 0, 1, 2, 5 ms. Every
  payload is a ramp of bytes that are never 0xFF and differ from its neighbours': the script
  counts the bytes that are silence (0xFF) between the track's first and last byte (holes), the
  payload bytes missing from the output (overwritten), and the packets not found intact, each
  after the previous one (damaged).
* **Cost per packet.** The mean wall time of ``Mixer.add`` over two tracks of in-order packets
  (frame 100 ms, reorder window 60 ms: the ingest defaults), jittered ±2 ms, best of
  ``--repeat`` runs of 5000 packets; it includes the frames' construction.

Run: ``.venv/bin/python benchmarks/mixer_jitter.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from services.ingest.mixer import Mixer  # noqa: E402

PACKET_MS = 20
PACKET_B = 160
TRACKS = ("inbound", "outbound")


def payload(track: int, i: int) -> bytes:
    """160 bytes never 0xFF, different from the previous and next packet of the track."""
    base = (i * 7 + track * 101) % 90
    return bytes((base + k) % 254 for k in range(PACKET_B))


def jittered(n: int, jitter_ms: int, seed: int) -> list[tuple[int, int, int]]:
    """(track, timestamp ms, index) of ``n`` packets per track, in arrival order."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        for tr in (0, 1):
            j = 0 if i == 0 else rng.randint(-jitter_ms, jitter_ms)
            out.append((tr, PACKET_MS * i + j, i))
    return out


def damage(n: int, jitter_ms: int, seed: int) -> dict[str, float]:
    """Holes, overwritten bytes and damaged packets, over both tracks."""
    m = Mixer(2, frame_ms=100, reorder_ms=60, max_gap_ms=60_000)
    frames = []
    for tr, ts, i in jittered(n, jitter_ms, seed):
        frames += m.add(TRACKS[tr], ts, payload(tr, i))
    frames += m.flush()
    out = b"".join(f.pcmu for f in frames)
    holes = overwritten = damaged = 0
    for tr in (0, 1):
        got = out[tr::2]
        sent = b"".join(payload(tr, i) for i in range(n))
        first = next(k for k, b in enumerate(got) if b != 0xFF)
        last = len(got) - next(k for k, b in enumerate(reversed(got)) if b != 0xFF)
        body = got[first:last]
        holes += body.count(0xFF)
        overwritten += len(sent) - (len(body) - body.count(0xFF))
        pos = 0
        for i in range(n):  # each packet must appear, intact, after the previous one
            at = got.find(payload(tr, i), pos)
            if at < 0:
                damaged += 1
            else:
                pos = at + PACKET_B
    total_b = 2 * n * PACKET_B
    return {
        "holes_pct": 100 * holes / total_b,
        "overwritten_pct": 100 * max(overwritten, 0) / total_b,
        "damaged_pct": 100 * damaged / (2 * n),
    }


def cost_us(repeat: int) -> float:
    """Best-of-``repeat`` mean µs per ``Mixer.add`` of 5000 jittered packets over two tracks."""
    packets = [(TRACKS[tr], ts, payload(tr, i)) for tr, ts, i in jittered(2500, 2, 1)]
    best = float("inf")
    for _ in range(repeat):
        m = Mixer(2, frame_ms=100, reorder_ms=60, max_gap_ms=60_000)
        add = m.add
        t0 = time.perf_counter()
        for track, ts, data in packets:
            add(track, ts, data)
        best = min(best, (time.perf_counter() - t0) / len(packets))
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--packets", type=int, default=500, help="packets per track")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{args.packets} packets per track, seed {args.seed}")
    print("jitter   holes   overwritten   packets damaged")
    for j in (0, 1, 2, 5):
        d = damage(args.packets, j, args.seed)
        print(
            f"±{j} ms   {d['holes_pct']:5.2f} %   {d['overwritten_pct']:5.2f} %"
            f"       {d['damaged_pct']:5.1f} %"
        )
    print(f"cost: {cost_us(args.repeat):.2f} µs per packet (Mixer.add, 2 tracks, ±2 ms)")


if __name__ == "__main__":
    main()
