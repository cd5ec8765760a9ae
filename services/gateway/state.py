"""One gateway process's state: settings, hub, open connections, authenticator and guard.

:class:`Gateway` is what every endpoint (WebSockets, REST, ``/metrics``) is handed; it also
answers the one question they all ask: may this token see that call?
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.gateway import store
from services.gateway.auth import Authenticator, Grant
from services.gateway.connection import Connections
from services.gateway.guard import Guard
from services.gateway.hub import Hub
from shared.schema import CallMeta
from shared.settings import GatewaySettings


@dataclass
class Gateway:
    """One gateway instance's state: its settings, hub, open connections, authenticator and
    per-address guard (the last two built from ``settings`` unless given)."""

    settings: GatewaySettings
    hub: Hub
    connections: Connections
    auth: Authenticator = field(default=None)  # type: ignore[assignment]
    guard: Guard = field(default=None)  # type: ignore[assignment]
    refused_tokens: int = 0

    def __post_init__(self) -> None:
        if self.auth is None:
            self.auth = Authenticator(self.settings)
        if self.guard is None:
            self.guard = Guard(self.settings)

    async def visible(self, grant: Grant, call_sid: str) -> bool:
        """Whether ``grant`` may see the call (reads its metadata only when the scope needs it).

        Raises RedisUnavailable.
        """
        by_sid = grant.sees_sid(call_sid)
        if by_sid is False:
            return False
        if by_sid and grant.history:
            return True
        meta = await store.call_meta(self.hub.redis, call_sid, self.hub.redis_timeout_s)
        return meta is not None and grant.sees(meta)

    async def visible_calls(self, grant: Grant) -> list[CallMeta]:
        """The active calls ``grant`` may see. Raises RedisUnavailable."""
        calls = await store.active_calls(self.hub.redis, self.hub.redis_timeout_s)
        return calls if grant.all_calls else grant.filter(calls)
