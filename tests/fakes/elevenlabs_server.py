"""A fake ElevenLabs text-to-speech API: a real HTTP server on 127.0.0.1 for the official SDK.

It speaks what ``elevenlabs`` 2.x sends (``text_to_speech/raw_client.py``):
``POST /v1/text-to-speech/{voice_id}`` and ``POST /v1/text-to-speech/{voice_id}/stream``,
query ``output_format`` (``mp3_44100_128`` unless asked otherwise), ``enable_logging``,
``optimize_streaming_latency``; header ``xi-api-key``; JSON body ``{"text", "model_id", …}``.
The answer is ``audio/mpeg``: a real MPEG-1 Layer III stream (:func:`mp3_clip`) whose length
follows the text, so a test can decode what was stored. Errors are the API's JSON
``{"detail": {"status", "message"}}`` with the HTTP status.

Tests set :attr:`FakeElevenLabs.delay_s` (a realistic synthesis time) and
:attr:`FakeElevenLabs.fail_texts` / :attr:`FakeElevenLabs.fail_all` (failure modes); every
request is recorded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tests.live import serve

__all__ = ["FakeElevenLabs", "TtsRequest", "fake_elevenlabs", "mp3_clip", "mp3_frames"]

API_KEY = "el-test-key"
# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, no padding, no CRC, joint stereo off (mono).
_HEADER = bytes([0xFF, 0xFB, 0x90, 0xC4])
_FRAME_BYTES = 144 * 128_000 // 44_100  # 417
_SAMPLES_PER_FRAME = 1152


def mp3_clip(seconds: float) -> bytes:
    """A valid MP3 of `seconds` of silence: frames of header, zero side info, zero data.

    Zero side information means no Huffman data (big_values 0) and zero global gain, which
    every decoder renders as silence; the frame layout is the real one.
    """
    frames = max(1, round(seconds * 44_100 / _SAMPLES_PER_FRAME))
    frame = _HEADER + bytes(_FRAME_BYTES - len(_HEADER))
    return frame * frames


_BITRATES = [0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320]
_RATES = [44_100, 48_000, 32_000]


def mp3_frames(data: bytes) -> int:
    """Walk an MPEG-1 Layer III stream frame by frame; the frame count, or ValueError.

    The test's decoder: every frame must start with a sync word and a valid header, and the
    frame lengths it declares must tile the data exactly.
    """
    pos = frames = 0
    while pos < len(data):
        h = data[pos : pos + 4]
        if len(h) < 4 or h[0] != 0xFF or (h[1] & 0xFE) != 0xFA:
            raise ValueError(f"no MPEG-1 Layer III frame at byte {pos}")
        bitrate_index, rate_index, padding = h[2] >> 4, (h[2] >> 2) & 3, (h[2] >> 1) & 1
        if not 0 < bitrate_index < 15 or rate_index == 3:
            raise ValueError(f"bad frame header at byte {pos}")
        length = 144 * _BITRATES[bitrate_index] * 1000 // _RATES[rate_index] + padding
        if pos + length > len(data):
            raise ValueError(f"truncated frame at byte {pos}")
        pos += length
        frames += 1
    if frames == 0:
        raise ValueError("no audio frames")
    return frames


@dataclass(frozen=True)
class TtsRequest:
    voice_id: str
    text: str
    model_id: str | None
    output_format: str | None
    api_key: str | None
    streaming: bool


class FakeElevenLabs:
    """The server's state and its Starlette app; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._requests: list[TtsRequest] = []
        self.base_url = ""
        self.delay_s = 0.0
        self.fail_all = False  # every request answers 500
        self.fail_texts: set[str] = set()  # requests whose text contains one of these fail
        self.fail_requests: set[int] = set()  # the n-th requests (1-based) fail
        self.app = Starlette(
            routes=[
                Route("/v1/text-to-speech/{voice_id}", self._convert, methods=["POST"]),
                Route("/v1/text-to-speech/{voice_id}/stream", self._convert, methods=["POST"]),
            ]
        )

    @property
    def requests(self) -> list[TtsRequest]:
        with self._lock:
            return list(self._requests)

    def wait_for_requests(self, count: int, timeout_s: float = 10.0) -> list[TtsRequest]:
        with self._lock:
            if not self._lock.wait_for(lambda: len(self._requests) >= count, timeout_s):
                raise TimeoutError(f"expected {count} requests, got {len(self._requests)}")
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()
            self.delay_s = 0.0
            self.fail_all = False
            self.fail_texts = set()
            self.fail_requests = set()

    @staticmethod
    def clip_for(text: str) -> bytes:
        """What the server answers for `text`: about 60 ms of audio per character."""
        return mp3_clip(max(0.2, len(text) * 0.06))

    async def _convert(self, request: Request) -> Response:
        body = await request.json()
        recorded = TtsRequest(
            voice_id=request.path_params["voice_id"],
            text=str(body.get("text", "")),
            model_id=body.get("model_id"),
            output_format=request.query_params.get("output_format"),
            api_key=request.headers.get("xi-api-key"),
            streaming=request.url.path.endswith("/stream"),
        )
        with self._lock:
            self._requests.append(recorded)
            self._lock.notify_all()
            delay = self.delay_s
            fail = (
                self.fail_all
                or len(self._requests) in self.fail_requests
                or any(t in recorded.text for t in self.fail_texts)
            )
        if delay:
            await asyncio.sleep(delay)  # the synthesis time a real voice takes
        if recorded.api_key != API_KEY:
            return _error(401, "invalid_api_key", "Invalid API key")
        if not recorded.text:
            return _error(422, "invalid_text", "text must not be empty")
        if fail:
            return _error(500, "internal_error", "synthesis failed")
        if (recorded.output_format or "mp3_44100_128") != "mp3_44100_128":
            return _error(422, "unsupported_format", "the fake speaks mp3_44100_128 only")
        return Response(self.clip_for(recorded.text), media_type="audio/mpeg")


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"detail": {"status": code, "message": message}}, status_code=status)


@pytest.fixture(scope="session")
def fake_elevenlabs_server() -> Iterator[FakeElevenLabs]:
    fake = FakeElevenLabs()
    with serve(fake.app) as base_url:
        fake.base_url = base_url
        yield fake


@pytest.fixture
def fake_elevenlabs(fake_elevenlabs_server: FakeElevenLabs) -> Iterator[FakeElevenLabs]:
    """The fake TTS API, reset: no delay, no failures, no recorded requests."""
    fake = fake_elevenlabs_server
    fake.reset()
    yield fake
    fake.reset()
