"""The echo runtime's audio and images: answers of the right shape, made from the request.

A transcription or translation says how many bytes of audio it got; speech is a WAV
file of silence, a little longer per word; an image is a small PNG of one colour
picked by the prompt. None of it is real audio or vision: it lets a client and the
gateway's multipart, event and bytes relays be tried on the shipped config.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
import zlib
from typing import Any, AsyncIterator

import orjson

WORD_DELAY_S = 0.02
SAMPLE_RATE = 8000
SILENCE_PER_WORD = 400         # 50 ms of 8-bit mono silence per word of the input
IMAGE_SIDE = 8


def transcription(fields: dict[str, Any], sizes: dict[str, int]) -> tuple[bytes, str,
                                                                          list[str]]:
    """(whole body, content type, words) of a transcription of the uploaded file."""
    words = f"echo heard {sizes.get('file', 0)} bytes of audio".split()
    text = " ".join(words)
    usage = {"type": "tokens", "input_tokens": 0, "output_tokens": len(words),
             "total_tokens": len(words)}
    if fields.get("response_format") == "text":
        return text.encode(), "text/plain; charset=utf-8", words
    return orjson.dumps({"text": text, "usage": usage}), "application/json", words


async def transcript_events(words: list[str]) -> AsyncIterator[bytes]:
    """OpenAI's streamed transcription: deltas, then transcript.text.done."""
    for i, word in enumerate(words):
        await asyncio.sleep(WORD_DELAY_S)
        delta = word if i == 0 else " " + word
        yield b"data: " + orjson.dumps({"type": "transcript.text.delta", "delta": delta}) + b"\n\n"
    done = {"type": "transcript.text.done", "text": " ".join(words),
            "usage": {"type": "tokens", "input_tokens": 0, "output_tokens": len(words),
                      "total_tokens": len(words)}}
    yield b"data: " + orjson.dumps(done) + b"\n\n"


async def speech(text: str) -> AsyncIterator[bytes]:
    """A WAV of silence, 50 ms per word, sent header first and then word by word."""
    words = max(1, len(text.split()))
    size = words * SILENCE_PER_WORD
    yield (b"RIFF" + struct.pack("<I", 36 + size) + b"WAVEfmt "
           + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE, 1, 8)
           + b"data" + struct.pack("<I", size))
    for _ in range(words):
        await asyncio.sleep(WORD_DELAY_S)
        yield b"\x80" * SILENCE_PER_WORD


def image(payload: dict[str, Any]) -> bytes:
    """An images answer: `n` small PNGs of the prompt's colour, as b64_json."""
    prompt = payload["prompt"]
    n = payload.get("n") if isinstance(payload.get("n"), int) and 1 <= payload["n"] <= 4 else 1
    png = base64.b64encode(_png(hashlib.blake2b(prompt.encode(), digest_size=3).digest()))
    words = len(prompt.split())
    return orjson.dumps({"created": int(time.time()),
                         "data": [{"b64_json": png.decode(), "revised_prompt": prompt}] * n,
                         "usage": {"input_tokens": words, "output_tokens": 0,
                                   "total_tokens": words}})


def _png(rgb: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    rows = (b"\x00" + rgb * IMAGE_SIDE) * IMAGE_SIDE
    header = struct.pack(">IIBBBBB", IMAGE_SIDE, IMAGE_SIDE, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))
