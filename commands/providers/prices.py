"""The one price table: US dollars per million tokens, by contract model name.

Prices are Anthropic's published list prices for standard (non-batch, uncached) input and
output tokens. The daily spend cap (contract §10) sums ``cost_usd`` computed here, so this
is the only place a price may live.

| contract name | SDK model ids             | input $/Mtok | output $/Mtok |
|---------------|---------------------------|--------------|---------------|
| haiku-4-5     | claude-haiku-4-5[-date]   | 1.00         | 5.00          |
| sonnet-4-6    | claude-sonnet-4-6[-date]  | 3.00         | 15.00         |
| opus-4-7      | claude-opus-4-7[-date]    | 5.00         | 25.00         |
| offline       | (local tutor)             | 0            | 0             |

Speech (ElevenLabs) is priced per character of text, by TTS model id, at the API's
pay-as-you-go rates: flash and turbo models $0.05 per 1,000 characters, the others $0.10
(an unknown model is priced as the dearer kind, so the spend cap errs on the safe side).
Its runs are recorded as model ``elevenlabs`` with the characters in ``prompt_tokens``.

An SDK id this table does not know keeps its own name as the contract name and costs 0:
the run is still recorded (tokens, latency) and the zero cost is visible in model_runs,
which is where an operator notices that a price is missing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

__all__ = [
    "PRICES",
    "TTS_MODEL",
    "ModelPrice",
    "contract_model_name",
    "cost_usd",
    "tts_cost_usd",
]

OFFLINE_MODEL = "offline"
_MILLION = Decimal(1_000_000)
# NUMERIC(10,5) in model_runs.cost_usd.
_COST_QUANTUM = Decimal("0.00001")
# Dated snapshot ids ("claude-haiku-4-5-20251001") price like their alias.
_DATED_SUFFIX = re.compile(r"-\d{8}$")


@dataclass(frozen=True)
class ModelPrice:
    input_per_mtok: Decimal
    output_per_mtok: Decimal


PRICES: dict[str, ModelPrice] = {
    "haiku-4-5": ModelPrice(Decimal("1.00"), Decimal("5.00")),
    "sonnet-4-6": ModelPrice(Decimal("3.00"), Decimal("15.00")),
    "opus-4-7": ModelPrice(Decimal("5.00"), Decimal("25.00")),
    OFFLINE_MODEL: ModelPrice(Decimal(0), Decimal(0)),
}


def contract_model_name(model_id: str) -> str:
    """``claude-haiku-4-5`` → ``haiku-4-5``; an id not in the table is returned unchanged."""
    name = _DATED_SUFFIX.sub("", model_id)
    name = name.removeprefix("claude-")
    return name if name in PRICES else model_id


def cost_usd(model: str, prompt_tokens: int, completion_tokens: int) -> Decimal:
    """Cost of one call for a contract model name, quantized to 0.00001 USD (0 if unknown)."""
    price = PRICES.get(model)
    if price is None:
        return Decimal(0).quantize(_COST_QUANTUM)
    total = (
        Decimal(prompt_tokens) * price.input_per_mtok
        + Decimal(completion_tokens) * price.output_per_mtok
    ) / _MILLION
    return total.quantize(_COST_QUANTUM)


TTS_MODEL = "elevenlabs"  # the contract model name of every speech synthesis run
_TTS_PER_KCHAR_CHEAP = Decimal("0.05")  # eleven_flash_*, eleven_turbo_*
_TTS_PER_KCHAR = Decimal("0.10")  # eleven_multilingual_*, eleven_v3, anything else


def tts_cost_usd(tts_model: str, characters: int) -> Decimal:
    """Cost of synthesising `characters` characters with an ElevenLabs model id."""
    cheap = tts_model.startswith(("eleven_flash", "eleven_turbo"))
    per_kchar = _TTS_PER_KCHAR_CHEAP if cheap else _TTS_PER_KCHAR
    return (Decimal(characters) * per_kchar / 1000).quantize(_COST_QUANTUM)
