"""The environment variables each service reads, as the README's configuration table, and the
deprecated names still in use (:mod:`shared.settings` holds the models)."""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import AliasChoices

from shared.settings import CommonSettings, GatewaySettings, IngestSettings, TranscriberSettings

SERVICE_SETTINGS: dict[str, type[CommonSettings]] = {
    "all services": CommonSettings,
    "ingest": IngestSettings,
    "transcriber": TranscriberSettings,
    "gateway": GatewaySettings,
}
"""Each settings model by the service that reads it (``CommonSettings``: every service)."""


def env_names(model: type[CommonSettings], name: str) -> tuple[str, ...]:
    """The environment variables field ``name`` of ``model`` reads, preferred first
    (``("INGEST_PORT", "PORT")``, or ``("FRAME_MS",)``)."""
    alias = model.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice).upper() for choice in alias.choices)
    return (name.upper(),)


def deprecated_names(
    model: type[CommonSettings], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(old, new)`` for each unprefixed variable set in ``environ`` (default ``os.environ``)
    that ``model`` reads only for compatibility: the caller warns once at start."""
    env = {k.upper() for k in (os.environ if environ is None else environ)}
    found = []
    for name in model.model_fields:
        preferred, *old = env_names(model, name)
        found += [(o, preferred) for o in old if o in env and preferred not in env]
    return found


def markdown_table() -> str:
    """The configuration table of the README: one row per environment variable.

    The README carries this text between ``<!-- settings -->`` markers and a test checks that
    they agree, so the documentation cannot drift from the models.
    """
    rows = ["| variable | service | meaning | default |", "| --- | --- | --- | --- |"]
    for service, model in SERVICE_SETTINGS.items():
        for name, field in model.model_fields.items():
            if model is not CommonSettings and name in CommonSettings.model_fields:
                continue
            if field.default_factory is not None:
                default = "computed (see meaning)"
            elif field.default in (None, ""):
                default = "none"
            else:
                default = f"`{field.default}`"
            preferred, *old = env_names(model, name)
            meaning = str(field.description)
            if old:
                meaning += f" (`{'`, `'.join(old)}` is still read, deprecated)"
            rows.append(f"| `{preferred}` | {service} | {meaning} | {default} |")
    return "\n".join(rows)
