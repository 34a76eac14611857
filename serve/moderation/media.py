"""Limits on moderation inputs, checked before any model sees them.

Text: at most `MAX_TEXT_BYTES` of UTF-8. Images: base64 that decodes to at most
`MAX_IMAGE_BYTES`, a format Pillow recognises from the header, and at most `MAX_IMAGE_SIDE`
pixels a side. The side check reads only the header (`Image.open` is lazy), so a
decompression bomb is refused before its pixels are decoded; `decode_image` then decodes and
fails cleanly on a truncated or corrupt body.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from serve.errors import InvalidContent, RequestTooLarge

if TYPE_CHECKING:
    from PIL.Image import Image as PILImage

MAX_TEXT_BYTES = 64 * 1024
MAX_IMAGE_BYTES = 5 * 1024 * 1024
MAX_IMAGE_SIDE = 4096
FORMATS = "JPEG, PNG, WebP, GIF, BMP, ..."
# Pillow's messages name the stream it read, e.g. "cannot identify image file <_io.BytesIO
# object at 0x7f...>": an address means nothing to a client, and differs on every call
_OBJECT_REPR = re.compile(r"\s*<[^<>]* object at 0x[0-9A-Fa-f]+>")


def _reason(e: BaseException) -> str:
    """Pillow's message for `e` without object reprs (what is wrong, not where in memory)."""
    text = _OBJECT_REPR.sub("", str(e)).strip()
    return text or type(e).__name__


@dataclass(frozen=True)
class ImageInfo:
    data: bytes
    format: str
    width: int
    height: int


def check_text(text: str, *, field: str = "text", max_bytes: int = MAX_TEXT_BYTES) -> str:
    size = len(text.encode("utf-8"))
    if size > max_bytes:
        raise RequestTooLarge(f"{field} is {size} bytes of UTF-8; the limit is {max_bytes}")
    return text


def decode_base64_image(b64: str, *, field: str = "image_base64",
                        max_bytes: int = MAX_IMAGE_BYTES,
                        max_side: int = MAX_IMAGE_SIDE) -> ImageInfo:
    """Decode, then check size, format and dimensions from the header only."""
    # 4 base64 characters carry 3 bytes: refuse before allocating the decoded buffer
    if len(b64) * 3 // 4 > max_bytes + 3:
        raise RequestTooLarge(f"{field} decodes to more than {max_bytes} bytes (the limit)")
    try:
        data = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError) as e:
        raise InvalidContent(f"{field} is not valid base64: {e}") from e
    if len(data) > max_bytes:
        raise RequestTooLarge(f"{field} decodes to {len(data)} bytes; the limit is {max_bytes}")
    return inspect_image(data, field=field, max_side=max_side)


def inspect_image(data: bytes, *, field: str = "image_base64",
                  max_side: int = MAX_IMAGE_SIDE) -> ImageInfo:
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise InvalidContent(f"{field} is empty")
    try:
        with Image.open(io.BytesIO(data)) as im:
            fmt, (w, h) = str(im.format), im.size
    except Image.DecompressionBombError as e:  # a header claiming billions of pixels
        raise RequestTooLarge(f"{field} claims more pixels than allowed ({_reason(e)}); the "
                              f"limit is {max_side} a side") from e
    except UnidentifiedImageError as e:
        raise InvalidContent(f"{field} is not an image Pillow can read ({FORMATS}): no "
                             f"complete image header in its {len(data)} bytes (they start "
                             f"{data[:8].hex(' ')}, in hex)") from e
    except (OSError, ValueError) as e:
        raise InvalidContent(f"{field} is not an image Pillow can read ({FORMATS}): "
                             f"{_reason(e)}") from e
    if w > max_side or h > max_side:
        raise RequestTooLarge(f"{field} is {w}x{h} pixels; the limit is {max_side} a side")
    return ImageInfo(data=data, format=fmt, width=w, height=h)


def decode_image(data: bytes, *, field: str = "image_base64",
                 max_side: int = MAX_IMAGE_SIDE) -> PILImage:
    """The decoded RGB image (PIL), after the header checks; InvalidContent if corrupt."""
    from PIL import Image

    inspect_image(data, field=field, max_side=max_side)
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return im.convert("RGB")
    except (OSError, ValueError, SyntaxError) as e:  # truncated / corrupt pixel data
        raise InvalidContent(f"{field}: the image data is corrupt: {_reason(e)}") from e


THUMBNAIL_SIDE = 320


def thumbnail_webp(data: bytes, *, side: int = THUMBNAIL_SIDE) -> bytes | None:
    """A small WebP of the image (at most `side` pixels a side, quality 70) for the review
    queue: what reviewers see, kept with the item, so the console never loads the image
    from where it came. None when the image cannot be decoded (it is then reviewed by its
    scores and reasons)."""
    from PIL import Image

    try:
        im = decode_image(data)
    except (InvalidContent, RequestTooLarge):
        return None
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, format="WEBP", quality=70)
    return out.getvalue()
