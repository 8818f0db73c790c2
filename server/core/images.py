"""Images a request refers to, as the bytes of checked image files: data URLs decoded, remote URLs fetched when the
server allows it, each file's type and size read from its header and held to the server's caps before libmtmd
decodes it (engine/vision.py). Every protocol's image parts come here as (url, param) pairs."""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

import httpx

from ..engine.vision import MEDIA_MARKER
from ..errors import InvalidRequestError
from ..wire.limits import ImageLimits

__all__ = ["MEDIA_MARKER", "ImageRef", "image_size", "load_images"]


@dataclass(frozen=True)
class ImageRef:
    """One image part of a request: its URL (data: or http(s):) and the request field that holds it."""

    url: str
    param: str


async def load_images(refs: list[ImageRef], limits: ImageLimits) -> tuple[bytes, ...]:
    """Each image's file, in order; a 400 naming the part for one that is not a usable image."""
    out = []
    for ref in refs:
        data = await _fetch(ref, limits) if ref.url.startswith(("http://", "https://")) else _decode(ref, limits)
        _check(data, ref.param, limits)
        out.append(data)
    return tuple(out)


def _decode(ref: ImageRef, limits: ImageLimits) -> bytes:
    header, comma, payload = ref.url.partition(",")
    if not ref.url.startswith("data:") or not comma:
        raise InvalidRequestError("an image URL must be a data URL (data:image/png;base64,...) or an http(s) URL",
                                  param=ref.param)
    media_type, _, encoding = header[5:].partition(";")
    if encoding != "base64":
        raise InvalidRequestError("an image data URL must be base64 (data:image/png;base64,...)", param=ref.param)
    if media_type and not media_type.startswith("image/"):
        raise InvalidRequestError(f"{media_type!r} is not an image media type", param=ref.param)
    if len(payload) > (limits.max_bytes + 2) // 3 * 4 + 4:
        raise _too_large(ref.param, limits)
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError("the image's data is not valid base64", param=ref.param) from None


async def _fetch(ref: ImageRef, limits: ImageLimits) -> bytes:
    if not limits.allow_remote:
        raise InvalidRequestError("this server does not fetch image URLs (allow_remote_images is off): send the "
                                  "image as a data URL (data:image/png;base64,...)", param=ref.param)
    data = bytearray()
    try:
        async with httpx.AsyncClient(timeout=limits.remote_timeout, follow_redirects=True) as client, \
                client.stream("GET", ref.url) as response:
            if response.status_code != 200:
                raise InvalidRequestError(f"fetching the image answered HTTP {response.status_code}", param=ref.param)
            async for piece in response.aiter_bytes():
                data += piece
                if len(data) > limits.max_bytes:
                    raise _too_large(ref.param, limits)
    except httpx.HTTPError as exc:
        raise InvalidRequestError(f"could not fetch the image (within {limits.remote_timeout:g} s, "
                                  f"remote_image_timeout_seconds): {type(exc).__name__}", param=ref.param) from None
    return bytes(data)


def _too_large(param: str, limits: ImageLimits) -> InvalidRequestError:
    return InvalidRequestError(f"the image is larger than {limits.max_bytes} bytes (max_image_bytes)", param=param)


def _check(data: bytes, param: str, limits: ImageLimits) -> None:
    if len(data) > limits.max_bytes:
        raise _too_large(param, limits)
    size = image_size(data)
    if size is None:
        raise InvalidRequestError("the image is not a PNG, JPEG, GIF or BMP file (or its header is cut short)",
                                  param=param)
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidRequestError(f"the image's header says it is {width}x{height} pixels", param=param)
    if width * height > limits.max_pixels:
        raise InvalidRequestError(f"the image is {width}x{height} pixels, more than {limits.max_pixels} "
                                  "(max_image_pixels)", param=param)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, GIF or BMP header, the formats libmtmd's loader (stb_image) reads and
    nomoat lets through; None for anything else. Read before decoding, so a small file claiming a huge image is
    refused without its pixels ever being allocated."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24 and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return width, height
    if data.startswith(b"BM") and len(data) >= 26:
        width, height = struct.unpack("<ii", data[18:26])
        return width, abs(height)  # a negative height: rows stored top down
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The frame's size from a JPEG's first SOF marker."""
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2:i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[i + 5:i + 9])
            return width, height
        i += 2 + length
    return None
