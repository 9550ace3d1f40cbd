"""Speech synthesis through the official ElevenLabs SDK.

One call per narration: ``text_to_speech.convert`` returns the MP3 bytes (``mp3_44100_128``),
which are stored exactly as the API sent them. ``ELEVENLABS_BASE_URL`` points the SDK at
another server (tests run a local one that speaks the same HTTP API).

Without ``ELEVENLABS_API_KEY`` there is no speech at all (``open_tts`` returns None): beats
complete with ``audio_url`` null and no ``audio_ready`` is sent. docs/assets.md says why no
local engine stands in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from decimal import Decimal

import httpx

from commands.providers.prices import tts_cost_usd
from eventstore.settings import Settings

OUTPUT_FORMAT = "mp3_44100_128"
AUDIO_MIME = "audio/mpeg"


class SpeechFailed(Exception):
    """The TTS API failed or answered something that is not audio."""

    def __init__(self, message: str, latency_ms: int, status: str = "error") -> None:
        super().__init__(message)
        self.latency_ms = latency_ms
        self.status = status  # error | timeout | rate_limited


@dataclass(frozen=True)
class Speech:
    audio: bytes
    characters: int
    cost_usd: Decimal
    latency_ms: int


class ElevenLabsTTS:
    """The SDK's async client, opened once per process; `aclose` releases its connections."""

    name = "elevenlabs"

    def __init__(
        self, api_key: str, model: str, base_url: str | None = None, timeout_s: float = 30.0
    ) -> None:
        from elevenlabs.client import AsyncElevenLabs

        self.model = model
        self._http = httpx.AsyncClient(timeout=timeout_s)
        self._client = AsyncElevenLabs(
            api_key=api_key, base_url=base_url, timeout=timeout_s, httpx_client=self._http
        )

    async def synthesize(self, text: str, voice_id: str) -> Speech:
        from elevenlabs.core.api_error import ApiError

        started = time.monotonic()

        def elapsed() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            chunks = self._client.text_to_speech.convert(
                voice_id,
                text=text,
                model_id=self.model,
                output_format=OUTPUT_FORMAT,
                # The narrator owns retries (there are none: a failed clip is skipped).
                request_options={"max_retries": 0},
            )
            audio = b"".join([chunk async for chunk in chunks])
        except ApiError as e:
            status = "rate_limited" if e.status_code == 429 else "error"
            raise SpeechFailed(f"TTS API answered {e.status_code}", elapsed(), status) from e
        except httpx.TimeoutException as e:
            raise SpeechFailed("TTS API timed out", elapsed(), "timeout") from e
        except httpx.HTTPError as e:
            raise SpeechFailed(f"TTS API unreachable: {e}", elapsed()) from e
        if not audio:
            raise SpeechFailed("TTS API answered no audio", elapsed())
        return Speech(
            audio=audio,
            characters=len(text),
            cost_usd=tts_cost_usd(self.model, len(text)),
            latency_ms=elapsed(),
        )

    async def aclose(self) -> None:
        await self._http.aclose()


def open_tts(settings: Settings) -> ElevenLabsTTS | None:
    """ElevenLabs when ELEVENLABS_API_KEY is set; None (no narration) otherwise."""
    if not settings.elevenlabs_api_key:
        return None
    return ElevenLabsTTS(
        settings.elevenlabs_api_key,
        settings.tts_model,
        base_url=settings.elevenlabs_base_url,
        timeout_s=settings.tts_timeout_s,
    )
