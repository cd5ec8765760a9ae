"""Small, pure rate and connection limits shared by ingest and the gateway.

Nothing here does I/O or reads a clock: callers pass ``now`` (seconds of a monotonic clock,
e.g. ``loop.time()``), so the limits are exact in tests. Used for the per-address connection
caps and message rates of docs/security.md ("Limits").
"""

from __future__ import annotations

from collections import Counter


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved; :meth:`take` spends one.

    Args:
        rate_per_s: refill rate, tokens per second (> 0).
        burst: the bucket's size, tokens (>= 1); it starts full.
        now: the current time, s.
    """

    __slots__ = ("burst", "rate_per_s", "stamp", "tokens")

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be > 0 and burst >= 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float, n: float = 1.0) -> bool:
        """Spend ``n`` tokens if there are that many (after refilling up to ``now``)."""
        tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if tokens < n:
            self.tokens = tokens
            return False
        self.tokens = tokens - n
        return True

    def full(self, now: float) -> bool:
        """True when the bucket would be full at ``now`` (its key can be forgotten)."""
        return self.tokens + (now - self.stamp) * self.rate_per_s >= self.burst


class KeyedBuckets:
    """One :class:`TokenBucket` per key (a client address), at most ``max_keys`` remembered.

    When a new key would pass ``max_keys``, keys whose buckets are full again are forgotten
    first (they lose nothing); if every bucket is in use the new key is refused, so memory
    stays bounded whatever addresses a client forges.
    """

    def __init__(self, rate_per_s: float, burst: float, max_keys: int = 100_000) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: str, now: float) -> bool:
        """Spend one token of ``key``'s bucket; False when it is empty (or no room is left)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                for k in [k for k, b in self._buckets.items() if b.full(now)]:
                    del self._buckets[k]
                if len(self._buckets) >= self.max_keys:
                    return False
            bucket = self._buckets[key] = TokenBucket(self.rate_per_s, self.burst, now)
        return bucket.take(now)


class ConnectionCounter:
    """Open connections per key (a client address), at most ``max_per_key`` each."""

    def __init__(self, max_per_key: int) -> None:
        self.max_per_key = max_per_key
        self._open: Counter[str] = Counter()
        self.refused = 0

    def acquire(self, key: str) -> bool:
        """Count one more connection of ``key``; False (nothing counted) when it has the most."""
        if self._open[key] >= self.max_per_key:
            self.refused += 1
            if not self._open[key]:
                del self._open[key]
            return False
        self._open[key] += 1
        return True

    def release(self, key: str) -> None:
        """One connection of ``key`` closed (each successful :meth:`acquire` releases once)."""
        left = self._open[key] - 1
        if left > 0:
            self._open[key] = left
        else:
            del self._open[key]

    def open(self, key: str) -> int:
        """Connections of ``key`` open now."""
        return self._open.get(key, 0)


def pace_delay_s(count: int, elapsed_s: float, rate_per_s: float) -> float:
    """How long to wait so that ``count`` messages since the start average at most
    ``rate_per_s`` a second: ``count / rate − elapsed``, or 0 when already within it."""
    return max(0.0, count / rate_per_s - elapsed_s)


class FairShare:
    """Per-key holdings of one shared bounded buffer (``capacity`` items), so that no key
    (a call) can take it all.

    :meth:`admit` refuses an item when the buffer is full, or when it is at least half full
    and the key already holds its fair share, ``capacity / keys holding items``: a flood from
    one call is capped at its share while the others keep room for theirs.
    """

    __slots__ = ("_held", "capacity", "total")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.total = 0
        self._held: dict[str, int] = {}

    def admit(self, key: str) -> bool:
        """Count one more item of ``key`` unless the policy refuses it."""
        held = self._held.get(key, 0)
        total = self.total
        if total >= self.capacity or (
            held and 2 * total >= self.capacity and held * len(self._held) >= self.capacity
        ):
            return False
        self._held[key] = held + 1
        self.total = total + 1
        return True

    def release(self, key: str) -> None:
        """One item of ``key`` left the buffer."""
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)
        self.total -= 1

    def held(self, key: str) -> int:
        """Items ``key`` holds now."""
        return self._held.get(key, 0)
