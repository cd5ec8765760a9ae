"""Settings read from the environment as README.md's configuration table says."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from shared.settings import GatewaySettings, IngestSettings, TranscriberSettings


def test_engine_defaults_to_deepgram_only_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    """ASR_ENGINE is deepgram when DEEPGRAM_API_KEY is set, else whisper; empty means unset."""
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    monkeypatch.setenv("ASR_ENGINE", "")
    assert TranscriberSettings().asr_engine == "whisper"
    monkeypatch.setenv("DEEPGRAM_API_KEY", "secret")
    s = TranscriberSettings()
    assert s.asr_engine == "deepgram"
    assert s.deepgram_api_key is not None and "secret" not in repr(s)


def test_ports_and_urls_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """REDIS_URL, FRAME_MS and the default ports follow the contract."""
    monkeypatch.setenv("REDIS_URL", "redis://example:6380/2")
    monkeypatch.setenv("FRAME_MS", "40")
    for name in ("PORT", "INGEST_PORT", "GATEWAY_PORT"):
        monkeypatch.delenv(name, raising=False)
    ingest = IngestSettings()
    assert (ingest.redis_url, ingest.frame_ms, ingest.port) == ("redis://example:6380/2", 40, 5000)
    assert GatewaySettings().port == 8080


@pytest.mark.parametrize("url", ["abc.ngrok.app", "wss://abc.ngrok.app", "ftp://x"])
def test_public_url_needs_an_http_scheme(url: str) -> None:
    """A PUBLIC_URL without https:// is refused at start, not turned into wrong signature URLs."""
    with pytest.raises(ValidationError, match="PUBLIC_URL"):
        IngestSettings(public_url=url)
    assert IngestSettings(public_url="https://abc.ngrok.app/").public_url == "https://abc.ngrok.app"


def test_max_calls_defaults_by_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset MAX_CALLS is 500 for the Deepgram relay, 2 for embedded Whisper; a set one wins."""
    monkeypatch.delenv("MAX_CALLS", raising=False)
    monkeypatch.delenv("ASR_ENGINE", raising=False)
    monkeypatch.delenv("DEEPGRAM_API_KEY", raising=False)
    assert TranscriberSettings().max_calls == 8  # no key: whisper
    assert TranscriberSettings(asr_engine="deepgram").max_calls == 500
    monkeypatch.setenv("DEEPGRAM_API_KEY", "secret")
    assert TranscriberSettings().max_calls == 500
    monkeypatch.setenv("ASR_ENGINE", "whisper")
    assert TranscriberSettings().max_calls == 8
    monkeypatch.setenv("MAX_CALLS", "7")
    assert TranscriberSettings().max_calls == 7
    assert TranscriberSettings(max_calls=3).max_calls == 3


def test_transcriber_metrics_server_is_local_on_a_free_port_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The worker's /metrics binds 127.0.0.1 and port 0, so replicas on one host all start."""
    monkeypatch.delenv("METRICS_HOST", raising=False)
    monkeypatch.delenv("METRICS_PORT", raising=False)
    s = TranscriberSettings()
    assert (s.metrics_host, s.metrics_port) == ("127.0.0.1", 0)


def test_no_variable_means_two_things() -> None:
    """Apart from what every service honours (CommonSettings), no environment variable is read
    by two services, so one environment (or one .env file) can configure them all."""
    from shared.settings import CommonSettings
    from shared.settings_doc import env_names

    readers: dict[str, set[str]] = {}
    for service, model in {
        "ingest": IngestSettings,
        "transcriber": TranscriberSettings,
        "gateway": GatewaySettings,
    }.items():
        for name in model.model_fields:
            if name in CommonSettings.model_fields:
                continue
            for env in env_names(model, name)[:1]:  # the preferred name; old ones are deprecated
                readers.setdefault(env, set()).add(service)
    assert {env: s for env, s in readers.items() if len(s) > 1} == {}


def test_old_names_are_still_read_and_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """PORT still sets ingest's port when INGEST_PORT is not set, and is reported as deprecated;
    INGEST_PORT wins over it."""
    from shared.settings_doc import deprecated_names

    monkeypatch.setenv("PORT", "6001")
    monkeypatch.delenv("INGEST_PORT", raising=False)
    assert IngestSettings().port == 6001
    assert deprecated_names(IngestSettings) == [("PORT", "INGEST_PORT")]
    monkeypatch.setenv("INGEST_PORT", "6002")
    assert IngestSettings().port == 6002
    assert deprecated_names(IngestSettings) == []


def test_webhooks_need_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """WEBHOOK_URLS without WEBHOOK_SECRET (or with an empty one) is refused: the receivers could
    not tell our POSTs from anyone's; with a secret, or without URLs, the settings load."""
    monkeypatch.delenv("WEBHOOK_SECRET", raising=False)
    for secret in (None, ""):
        with pytest.raises(ValidationError, match="WEBHOOK_URLS needs WEBHOOK_SECRET"):
            TranscriberSettings(webhook_urls="https://hooks.example.com/cs", webhook_secret=secret)
    ok = TranscriberSettings(webhook_urls="https://hooks.example.com/cs", webhook_secret="s3cret")
    assert ok.webhook_secret is not None and ok.webhook_secret.get_secret_value() == "s3cret"
    assert TranscriberSettings(webhook_urls="").webhook_secret is None
