"""Compressed answers: a stream decompressed on the side for its meter, a whole body for reading usage."""

from __future__ import annotations

import contextlib
import zlib
from typing import Literal

from .base import CallMeter


def stream_decoder(encoding: str | None) -> zlib._Decompress | Literal[False] | None:
    """A streaming decompressor for gzip/deflate (None: not encoded; False: an encoding we cannot read)."""
    if not encoding or encoding == "identity":
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return False


def decode_body(body: bytes, encoding: str | None) -> bytes:
    """A whole body decompressed for reading usage (empty when it cannot be read)."""
    if not encoding or encoding == "identity":
        return body
    try:
        if encoding in ("gzip", "x-gzip"):
            return zlib.decompress(body, 16 + zlib.MAX_WBITS)
        if encoding == "deflate":
            return zlib.decompress(body)
    except zlib.error:
        return b""
    return b""


def feed_encoded(meter: CallMeter, decoder: zlib._Decompress | Literal[False], chunk: bytes) -> bytes:
    """Meter a compressed stream on a decompressed copy; the chunk itself passes on unchanged."""
    if decoder is not False:
        with contextlib.suppress(zlib.error):
            meter.feed(decoder.decompress(chunk))
    return chunk
