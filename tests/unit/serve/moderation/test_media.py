"""Input limits for moderation: text size, base64, image format and dimensions."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from serve.errors import InvalidContent, RequestTooLarge
from serve.moderation import media


def _png(w: int, h: int) -> bytes:
    b = io.BytesIO()
    Image.new("RGB", (w, h), (10, 20, 30)).save(b, "PNG")
    return b.getvalue()


def test_text_limit_counts_utf8_bytes() -> None:
    assert media.check_text("a" * 10, max_bytes=10) == "a" * 10
    with pytest.raises(RequestTooLarge, match="text is 12 bytes of UTF-8; the limit is 10"):
        media.check_text("é" * 6, max_bytes=10)


def test_valid_image_is_inspected_from_its_header() -> None:
    info = media.decode_base64_image(base64.b64encode(_png(30, 20)).decode())
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)


def test_corrupt_base64_is_invalid_content() -> None:
    with pytest.raises(InvalidContent, match="image_base64 is not valid base64"):
        media.decode_base64_image("not*base64!")


def test_non_image_payload_is_invalid_content() -> None:
    with pytest.raises(InvalidContent, match="not an image Pillow can read"):
        media.decode_base64_image(base64.b64encode(b"%PDF-1.4 hello").decode())


def test_oversized_image_bytes_and_sides_are_too_large() -> None:
    big = base64.b64encode(b"\0" * 2000).decode()
    with pytest.raises(RequestTooLarge, match="the limit"):
        media.decode_base64_image(big, max_bytes=1000)
    with pytest.raises(RequestTooLarge, match="is 40x20 pixels; the limit is 32 a side"):
        media.decode_base64_image(base64.b64encode(_png(40, 20)).decode(), max_side=32)


def test_truncated_image_fails_at_decode_not_at_header() -> None:
    data = _png(64, 64)[:60]
    with pytest.raises(InvalidContent):
        media.decode_image(data)
    assert media.decode_image(_png(8, 8)).size == (8, 8)


def test_a_header_claiming_billions_of_pixels_is_too_large_not_a_crash() -> None:
    # found by the gRPC fuzzer: Pillow's decompression-bomb guard raised out of the handler
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(
            ">I", zlib.crc32(kind + body))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 70_000, 70_000, 8,
                                                              2, 0, 0, 0))
           + chunk(b"IEND", b""))
    with pytest.raises(RequestTooLarge, match="claims more pixels"):
        media.inspect_image(png)
    with pytest.raises(RequestTooLarge):
        media.decode_image(png)


def test_an_unreadable_image_names_the_field_and_its_bytes_not_an_object_repr() -> None:
    # found by a new user: the 422 said "cannot identify image file <_io.BytesIO object at
    # 0x7f...>" (Pillow's message, naming the buffer it read)
    b64 = base64.b64encode(b"%PDF-1.4 hello").decode()
    with pytest.raises(InvalidContent) as e:
        media.decode_base64_image(b64)
    msg = str(e.value)
    assert msg.startswith("image_base64 is not an image Pillow can read (JPEG, PNG")
    assert "no complete image header in its 14 bytes (they start 25 50 44 46 2d 31 2e 34" in msg
    assert "object at 0x" not in msg and "BytesIO" not in msg
    with pytest.raises(InvalidContent, match=r"^image is not an image") as e:
        media.inspect_image(b"not an image", field="image")  # the gRPC field's name
    assert "object at 0x" not in str(e.value)
    with pytest.raises(InvalidContent) as e:
        media.decode_image(b"GIF89a")  # a signature, then nothing: Pillow's other messages
    assert "object at 0x" not in str(e.value) and str(e.value).startswith("image_base64")
