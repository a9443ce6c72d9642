"""Turn any image file a user may have into an 8-bit RGB PIL image, or a clear :class:`ImageError`.

Everything that reads pixels (training, caching, validation, the server) goes through here so that
odd files behave the same everywhere: EXIF orientation, CMYK/YCCK JPEGs, palettes, alpha, 16/32-bit
grayscale, multi-frame GIF/TIFF (first frame), truncated or fake files, decompression bombs.

The hot path is ``load_rgb(path, min_side=N)``: for JPEGs it asks libjpeg for a DCT-scaled decode
(1/2, 1/4 or 1/8 size, never below ``N``), which skips most of the inverse DCT and colour conversion
work, then resizes to exactly ``N`` with a high-quality filter.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageChops

from herbarium2field.errors import ConfigError, ImageError

__all__ = [
    "MAX_PIXELS",
    "SUPPORTED_TYPES",
    "check_image",
    "load_rgb",
    "load_rgb_bytes",
    "resize_short_side",
    "sniff_image_type",
]

_DEFAULT_MAX_PIXELS = 120_000_000


def _max_pixels_from_env() -> int:
    raw = os.environ.get("H2F_MAX_PIXELS", "").strip().replace("_", "")
    if not raw:
        return _DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise ConfigError(
            f"H2F_MAX_PIXELS={raw!r} is not a positive number of pixels",
            hint="set it to e.g. 120000000 (120 MP) or unset it",
        )
    return value


#: Largest image (width x height) we agree to decode; checked on the header before any pixel is decoded.
#: 120 MP covers the largest herbarium scans (~100 MP) while refusing crafted "bombs" (a tiny PNG whose
#: header claims 30000x30000 would need 2.7 GB). Set ``$H2F_MAX_PIXELS`` to change it. Note that PIL's own
#: hard limit (2 x ``PIL.Image.MAX_IMAGE_PIXELS`` = 179 MP) still applies on top of this one.
MAX_PIXELS: int = _max_pixels_from_env()

#: Content types we decode (what :func:`sniff_image_type` can return).
SUPPORTED_TYPES: tuple[str, ...] = ("jpeg", "png", "webp", "gif", "bmp", "tiff")

# PIL plugins allowed to open a file. Multi-picture JPEGs from cameras/phones open through "JPEG" too
# and come back with format "MPO".
_PIL_FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"]

# What PIL's plugins raise on bad data (besides OSError): a zoo, since each format parser is different.
_DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    IndexError,
    KeyError,
    TypeError,
    ZeroDivisionError,
)

_SNIFF_BYTES = 32
_HINT_REPLACE = "re-download or re-export the image, or remove it from the list file"
_HINT_CONVERT = "convert it to JPEG or PNG (e.g. with ImageMagick: `magick in.heic out.jpg`)"

_ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112
_BMP_DIB_SIZES = (12, 40, 52, 56, 64, 108, 124)
_WHITE = (255, 255, 255)


# ---- content sniffing ------------------------------------------------------------------------------


def sniff_image_type(data: bytes) -> str | None:
    """The image type from the first bytes of a file (magic numbers), or ``None`` if not one we decode.

    Decided from content, never the file name: uploads and scraped datasets often carry PNGs named
    ``.jpg`` (harmless) or HTML error pages named ``.jpg`` (must be refused with a clear message).
    Returns one of :data:`SUPPORTED_TYPES`.
    """
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    # "BM" alone is too weak (text can start with it): also require a known DIB header size.
    if data[:2] == b"BM" and len(data) >= 18 and struct.unpack_from("<I", data, 14)[0] in _BMP_DIB_SIZES:
        return "bmp"
    return None


def describe_unknown(head: bytes) -> tuple[str, str]:
    """A plain reason (and hint) for content that is not a supported image."""
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "AVIF images are not supported", _HINT_CONVERT
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC/HEIF images (iPhone photos) are not supported", _HINT_CONVERT
        return "a video/ISO-media file, not an image", _HINT_REPLACE
    if head.startswith(b"%PDF"):
        return "a PDF document, not an image", _HINT_CONVERT
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG 2000 images are not supported", _HINT_CONVERT
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "an HTML/XML/SVG text file, not an image (a failed download?)", _HINT_REPLACE
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file, not an image", _HINT_REPLACE
    return (
        f"not a supported image (content is not {', '.join(t.upper() for t in SUPPORTED_TYPES)})",
        _HINT_CONVERT,
    )


# ---- public API ------------------------------------------------------------------------------------


def load_rgb(path: str | Path, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Read an image file as an 8-bit ``RGB`` image, upright (EXIF orientation applied).

    With ``min_side``, the result is resized so that its short side is ``min_side`` (never upsampled,
    see :func:`resize_short_side`); JPEGs are then decoded DCT-scaled to the smallest 1/2^k size whose
    short side is still >= ``min_side``, which is several times faster than a full decode.
    Without it, the full-size image is returned.

    Raises :class:`ImageError` (naming the file, with a plain reason) for missing, empty, truncated,
    corrupt, unsupported or too-large files (over ``max_pixels``, checked on the header before decoding).
    """
    _check_min_side(min_side)
    path = Path(path)
    with _open_file(path) as fp:
        return _load(fp, path, min_side=min_side, max_pixels=max_pixels)


def load_rgb_bytes(
    data: bytes, name: str, *, min_side: int | None = None, max_pixels: int = MAX_PIXELS
) -> Image.Image:
    """Like :func:`load_rgb` for in-memory data (uploads); ``name`` is only used in error messages."""
    _check_min_side(min_side)
    return _load(io.BytesIO(data), name, min_side=min_side, max_pixels=max_pixels)


def resize_short_side(img: Image.Image, size: int) -> Image.Image:
    """Resize so that the short side is ``size``, keeping the aspect ratio; never upsamples.

    Images whose short side is already <= ``size`` are returned unchanged (the same object): upsampling
    adds no information, would bake one interpolation into the cache and inflate it, and the training /
    test transforms resize to the model's input size anyway. So consumers must not assume the short
    side is exactly ``size``, only at most ``size``.

    Lanczos with ``reducing_gap=3`` (a box pre-reduction for big factors): indistinguishable from plain
    Lanczos at that gap, per the PIL docs, and much faster on large PNG/TIFF scans.
    """
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    target = _short_side_target(img.size, size)
    return img if target is None else img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)


def check_image(path: str | Path, *, max_pixels: int = MAX_PIXELS) -> None:
    """Verify that ``path`` decodes completely into an RGB image; raise :class:`ImageError` if not.

    Cheap enough for ``h2f validate`` over a whole dataset: JPEGs are decoded at 1/8 scale (entropy
    decoding still reads every byte, so truncation and corrupt data are still caught), other formats
    fully; no resizing.
    """
    path = Path(path)
    with _open_file(path) as fp:
        img = _open_checked(fp, path, max_pixels)
        try:
            if img.format in ("JPEG", "MPO"):
                img.draft(img.mode, (1, 1))
            img.load()
            _to_rgb(img)
        except _DECODE_ERRORS as exc:
            raise _decode_error(path, exc) from None


# ---- internals -------------------------------------------------------------------------------------


def _open_file(path: Path) -> BinaryIO:
    """Open ``path`` for reading; a missing file, a folder or an unreadable file is an :class:`ImageError`.

    The caller closes it (``with``); PIL must not own it (a multi-frame image would keep it open).
    """
    try:
        return open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        raise ImageError("image file not found", path=path, hint="check the path and the list file") from None
    except IsADirectoryError:
        raise ImageError("is a folder, not an image file", path=path) from None
    except OSError as exc:
        raise ImageError(f"cannot read the file ({exc.strerror or exc})", path=path) from None


def _short_side_target(size: tuple[int, int], short: int) -> tuple[int, int] | None:
    """Output size with short side ``short`` and the aspect ratio of ``size``; None if no downsizing."""
    w, h = size
    if min(w, h) <= short:
        return None
    return (short, max(1, round(h * short / w))) if w <= h else (max(1, round(w * short / h)), short)


def _check_min_side(min_side: int | None) -> None:
    if min_side is not None and min_side < 1:
        raise ValueError(f"min_side must be >= 1, got {min_side}")


def _decode_error(name: str | Path, exc: BaseException, kind: str | None = None) -> ImageError:
    detail = str(exc).strip() or type(exc).__name__
    if isinstance(exc, Image.UnidentifiedImageError):
        reason = f"the file starts like a {(kind or 'image').upper()} but its header is corrupt or incomplete"
    elif "truncated" in detail.lower() or isinstance(exc, EOFError):
        reason = f"the image data is truncated (incomplete download or copy?) [{detail}]"
    else:
        reason = f"the image data is corrupt and cannot be decoded [{detail}]"
    return ImageError(reason, path=name, hint=_HINT_REPLACE)


def _open_checked(fp: BinaryIO, name: str | Path, max_pixels: int) -> Image.Image:
    """Sniff the content, open the header with PIL and refuse over-large images, all before decoding."""
    head = fp.read(_SNIFF_BYTES)
    if not head:
        raise ImageError("the file is empty (0 bytes)", path=name, hint=_HINT_REPLACE)
    kind = sniff_image_type(head)
    if kind is None:
        reason, hint = describe_unknown(head)
        raise ImageError(reason, path=name, hint=hint)
    fp.seek(0)
    try:
        # Our own limit (below) replaces PIL's warning threshold; PIL's hard error still applies.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=_PIL_FORMATS)
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"the image is too large to decode safely ({exc}; limit {max_pixels:,} pixels)",
            path=name,
            hint="if it is a genuine huge scan, downsize it first",
        ) from None
    except _DECODE_ERRORS as exc:
        raise _decode_error(name, exc, kind) from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageError(f"the image header claims an empty size {w}x{h}", path=name, hint=_HINT_REPLACE)
    if w * h > max_pixels:
        raise ImageError(
            f"the image is too large to decode safely: {w}x{h} = {w * h / 1e6:.0f} MP "
            f"(limit {max_pixels / 1e6:.0f} MP)",
            path=name,
            hint="downsize it first, or raise the limit with the environment variable H2F_MAX_PIXELS",
        )
    return img


def _load(fp: BinaryIO, name: str | Path, *, min_side: int | None, max_pixels: int) -> Image.Image:
    src = _open_checked(fp, name, max_pixels)
    original_size = src.size
    box = None  # the region of the decoded image that maps onto the original (draft rounds sizes up)
    try:
        if min_side is not None and src.format in ("JPEG", "MPO"):
            # Short side stays >= min_side: PIL picks scale = min(w // min_side, h // min_side) -> 8/4/2/1.
            drafted = src.draft(src.mode, (min_side, min_side))
            if drafted is not None:
                box = drafted[1]
        src.load()
        orientation = _orientation(src)
        img = _to_rgb(src)
    except _DECODE_ERRORS as exc:
        raise _decode_error(name, exc) from None
    # Target from the original size, so that draft and full decodes give the same geometry.
    # Resized before the transpose: the short side does not change with orientation.
    target = _short_side_target(original_size, min_side) if min_side is not None else None
    if target is not None:
        img = img.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
    method = _ORIENTATION_TRANSPOSE.get(orientation)
    if method is not None:
        img = img.transpose(method)
    if img is src and src.format != "JPEG":
        # Detach from the file object and from other frames (GIF/TIFF/MPO/APNG keep their file for seek).
        # A loaded single-frame JPEG holds neither (PIL drops its file at the end of load()), and the copy
        # was ~0.1 ms (7-8 %) of a 320 px decode, paid by every training item.
        img = img.copy()
    return img


def _orientation(img: Image.Image) -> int:
    """EXIF orientation (1..8); 1 when absent or when the EXIF block is unreadable (camera firmware bugs)."""
    try:
        value = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a good picture unreadable
        return 1
    return value if isinstance(value, int) else 1


def _to_rgb(img: Image.Image) -> Image.Image:
    """Convert any decoded mode to 8-bit RGB (may return ``img`` itself when already RGB)."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode == "CMYK":
        return _cmyk_to_rgb(img)
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return Image.fromarray(_to_uint8(np.asarray(img))).convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        return _composite_on_white(img.convert("RGBA"))
    if mode in ("1", "L", "P", "YCbCr", "RGBX"):
        return img.convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"unsupported pixel mode {mode!r}") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale 16/32-bit grayscale to 8 bit over the type's range (16-bit: /257), not by clipping at 255.

    32-bit integer data inside 0..65535 is treated as 16-bit (what most "I" images are); other
    integer or float data is stretched from its min..max, the only range we can infer.
    """
    if arr.dtype.kind in "ui" and arr.size and arr.min() >= 0 and arr.max() <= 65535:
        return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    data = np.nan_to_num(arr.astype(np.float64))
    lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((data - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    """Flatten alpha onto white: herbarium sheets are mounted on white/cream paper, and cut-out plants
    (transparent PNGs) look most like a sheet that way; black (PIL's default when dropping alpha) would
    create a background no training image has."""
    out = Image.new("RGB", rgba.size, _WHITE)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _cmyk_to_rgb(img: Image.Image) -> Image.Image:
    """CMYK (and YCCK, which libjpeg hands over as CMYK) to RGB.

    PIL assumes every CMYK JPEG is Adobe-style (stored inverted) and inverts on read; files without
    the Adobe APP14 marker store plain CMYK, so undo that inversion for them, as browsers do. An embedded
    ICC profile is honoured (naive CMYK->RGB is visibly off for press profiles); otherwise naive.
    """
    icc = img.info.get("icc_profile")
    if img.format in ("JPEG", "MPO") and "adobe" not in img.info:
        img = ImageChops.invert(img)
    if icc:
        try:
            from PIL import ImageCms

            src_profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            dst_profile = ImageCms.createProfile("sRGB")
            return ImageCms.profileToProfile(img, src_profile, dst_profile, outputMode="RGB")
        except Exception:  # noqa: BLE001 - a broken/unsupported profile: fall back to the naive formula
            pass
    return img.convert("RGB")
