"""mu-law helpers and the WAV reader."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.audio import (
    SILENCE,
    WavError,
    deinterleave,
    interleave,
    pcm16_to_ulaw,
    read_wav,
    ulaw_to_pcm16,
    upsample2,
)
from tests import recordings


def test_every_mulaw_code_survives_a_round_trip() -> None:
    """Decoding then encoding returns each code, but 0x7F (-0), which becomes 0xFF (+0)."""
    codes = bytes(range(256))
    back = pcm16_to_ulaw(ulaw_to_pcm16(codes))
    assert [i for i in range(256) if back[i] != codes[i]] == [0x7F]
    assert ulaw_to_pcm16(bytes([SILENCE]))[0] == 0


@given(st.lists(st.integers(-32768, 32767), min_size=1, max_size=200))
def test_encoding_error_stays_within_a_quantisation_step(samples: list[int]) -> None:
    """Any int16 sample encodes to a code whose value is within G.711's step for its segment."""
    x = np.array(samples, dtype=np.int16)
    y = ulaw_to_pcm16(pcm16_to_ulaw(x)).astype(np.int32)
    err = np.abs(y - np.clip(x.astype(np.int32), -32635, 32635))
    assert np.all(err <= np.maximum(np.abs(x.astype(np.int32)) // 16, 8) + 132)


def test_interleave_and_deinterleave_are_inverse() -> None:
    """Two channels interleave as ch0, ch1, ch0, ch1 and split back exactly."""
    a, b = bytes([1, 2, 3]), bytes([4, 5, 6])
    frame = interleave([a, b])
    assert frame == bytes([1, 4, 2, 5, 3, 6])
    left, right = deinterleave(frame, 2)
    assert left.tobytes() == a and right.tobytes() == b
    with pytest.raises(ValueError):
        interleave([a, b[:2]])
    with pytest.raises(ValueError):
        deinterleave(b"\x00\x00\x00", 2)


def test_reads_the_mulaw_recordings() -> None:
    """Format tag 7 files open: 8 kHz, two channels, about 27.9 s for call_dentist."""
    wav = read_wav(recordings.wav("call_dentist"))
    assert wav.rate == 8000 and wav.channels == 2
    assert abs(wav.duration_s - 27.869) < 0.01


def test_refuses_what_is_not_a_wav(tmp_path) -> None:
    """A file that is not RIFF/WAVE raises WavError, not a crash."""
    p = tmp_path / "x.wav"
    p.write_bytes(b"not a wav at all")
    with pytest.raises(WavError):
        read_wav(p)


def test_upsample2_keeps_a_tone() -> None:
    """A 1 kHz tone at 8 kHz stays a 1 kHz tone at 16 kHz with twice the samples."""
    t = np.arange(800) / 8000
    x = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    y = upsample2(x)
    assert y.shape == (1600,)
    t2 = np.arange(1600) / 16000
    assert np.max(np.abs(y - np.sin(2 * np.pi * 1000 * t2))) < 1e-3
