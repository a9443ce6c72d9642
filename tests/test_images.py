"""Image loading: every odd kind of file a user may have becomes an upright 8-bit RGB image, or a clear
ImageError naming the file. All test images are generated here; a few real sheets/photos come from the
shared sample."""

from __future__ import annotations

import io
import struct
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herbarium2field.data import images
from herbarium2field.data.images import (
    check_image,
    load_rgb,
    load_rgb_bytes,
    resize_short_side,
    sniff_image_type,
)
from herbarium2field.errors import ConfigError, ImageError

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def close(a, b, tol: int = 12) -> bool:
    return all(abs(int(x) - int(y)) <= tol for x, y in zip(a, b, strict=True))


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw: bytes = b"") -> bytes:
    """A PNG written by hand, so that headers can claim anything (and 16-bit RGB can be made)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )


def strip_adobe_marker(jpeg: bytes) -> bytes:
    """Remove the APP14 'Adobe' segment of a JPEG (to make a plain, non-inverted CMYK file)."""
    out, i = bytearray(jpeg[:2]), 2
    while i < len(jpeg):
        marker = jpeg[i + 1]
        if marker == 0xDA:  # start of scan: copy the rest
            out += jpeg[i:]
            break
        length = struct.unpack(">H", jpeg[i + 2 : i + 4])[0]
        if marker != 0xEE:
            out += jpeg[i : i + 2 + length]
        i += 2 + length
    return bytes(out)


def noisy_jpeg(path: Path, size: tuple[int, int] = (256, 192), quality: int = 90) -> Path:
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, "JPEG", quality=quality)
    return path


# ---- sniffing --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "expected", "mode"),
    [
        ("JPEG", "jpeg", "RGB"),
        ("PNG", "png", "RGB"),
        ("WEBP", "webp", "RGB"),
        ("GIF", "gif", "P"),
        ("BMP", "bmp", "RGB"),
        ("TIFF", "tiff", "RGB"),
    ],
)
def test_sniff_recognises_content(fmt, expected, mode):
    buf = io.BytesIO()
    Image.new(mode, (8, 8)).save(buf, fmt)
    assert sniff_image_type(buf.getvalue()) == expected


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"BM but just text here....", b"<html><body>404</body></html>", b"P6\n2 2\n255\n"],
)
def test_sniff_rejects_non_images(data):
    assert sniff_image_type(data) is None


# ---- odd but valid images ----------------------------------------------------------------------------


@pytest.mark.parametrize("min_side", [None, 20])
def test_exif_orientation_is_applied(tmp_path, min_side):
    img = Image.new("RGB", (60, 40), BLUE)
    img.paste(RED, (0, 0, 30, 40))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # camera held rotated: display turned 90 degrees clockwise
    path = tmp_path / "rotated.jpg"
    img.save(path, "JPEG", quality=95, exif=exif.tobytes())
    out = load_rgb(path, min_side=min_side)
    assert out.mode == "RGB"
    w, h = out.size
    assert (w, h) == ((40, 60) if min_side is None else (20, 30))
    assert close(out.getpixel((w // 2, h // 6)), RED)  # the left half is now on top
    assert close(out.getpixel((w // 2, 5 * h // 6)), BLUE)


def test_cmyk_jpeg_adobe_inverted(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, "JPEG", quality=95)
    assert b"Adobe" in path.read_bytes()
    out = load_rgb(path)
    assert out.mode == "RGB"
    assert close(out.getpixel((8, 8)), RED)


def test_cmyk_jpeg_without_adobe_marker_is_not_inverted(tmp_path):
    # PIL writes CMYK inverted (Adobe style); saving the complement and dropping the marker leaves
    # plain CMYK (0, 255, 255, 0) = red in the file, as a non-Adobe encoder would write it.
    buf = io.BytesIO()
    Image.new("CMYK", (16, 16), (255, 0, 0, 255)).save(buf, "JPEG", quality=95)
    data = strip_adobe_marker(buf.getvalue())
    assert b"Adobe" not in data
    path = tmp_path / "plain-cmyk.jpg"
    path.write_bytes(data)
    assert close(load_rgb(path).getpixel((8, 8)), RED)


def test_palette_png_with_transparency_goes_on_white(tmp_path):
    img = Image.new("P", (10, 10), 0)
    img.putpalette([0, 0, 0, 0, 128, 0] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))
    path = tmp_path / "palette.png"
    img.save(path, transparency=0)
    out = load_rgb(path)
    assert out.getpixel((1, 1)) == WHITE  # transparent black -> white paper, not black
    assert out.getpixel((8, 1)) == (0, 128, 0)


def test_palette_without_transparency(tmp_path):
    path = tmp_path / "palette.png"
    Image.new("RGB", (10, 10), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE).save(path)
    assert load_rgb(path).getpixel((2, 2)) == (10, 200, 30)


def test_rgba_and_la_are_composited_on_white(tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 128)).save(rgba)
    assert close(load_rgb(rgba).getpixel((0, 0)), (255, 127, 127), tol=2)
    la = tmp_path / "la.png"
    img = Image.new("LA", (4, 4), (0, 255))
    img.putpixel((0, 0), (0, 0))
    img.save(la)
    out = load_rgb(la)
    assert out.getpixel((0, 0)) == WHITE and out.getpixel((1, 1)) == (0, 0, 0)


def test_one_bit_and_grayscale(tmp_path):
    one = tmp_path / "one.png"
    img = Image.new("1", (8, 8), 0)
    img.putpixel((1, 1), 1)
    img.save(one)
    out = load_rgb(one)
    assert out.mode == "RGB" and out.getpixel((1, 1)) == WHITE and out.getpixel((0, 0)) == (0, 0, 0)
    gray = tmp_path / "gray.jpg"
    Image.new("L", (64, 48), 90).save(gray, quality=95)
    assert close(load_rgb(gray, min_side=16).getpixel((3, 3)), (90, 90, 90), tol=3)


@pytest.mark.parametrize(
    ("mode", "fmt"), [("I;16", "PNG"), ("I;16B", "TIFF"), ("I;16", "TIFF"), ("I", "TIFF")]
)
def test_16bit_grayscale_is_scaled_not_clipped(tmp_path, mode, fmt):
    path = tmp_path / f"gray16.{fmt.lower()}"
    img = Image.new(mode, (3, 1))
    for x, v in enumerate((0, 32768, 65535)):
        img.putpixel((x, 0), v)
    img.save(path, fmt)
    out = load_rgb(path)
    assert out.mode == "RGB"
    # clipping would give 255 for 32768; scaling gives its 8-bit equivalent
    assert [out.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_32bit_int_outside_16bit_range_is_stretched(tmp_path):
    path = tmp_path / "int32.tif"
    img = Image.new("I", (3, 1))
    for x, v in enumerate((-1000, 0, 1_000_000)):
        img.putpixel((x, 0), v)
    img.save(path)
    out = load_rgb(path)
    assert out.getpixel((0, 0))[0] == 0 and out.getpixel((2, 0))[0] == 255


def test_16bit_rgb_and_rgba_png(tmp_path):
    px = np.zeros((2, 3, 3), ">u2")
    px[..., 0], px[..., 1] = 65535, 32768
    raw = b"".join(b"\x00" + row.tobytes() for row in px)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png_bytes(3, 2, 16, 2, raw))
    assert load_rgb(path).getpixel((1, 1)) == (255, 128, 0)
    px4 = np.zeros((2, 3, 4), ">u2")
    px4[..., 2], px4[..., 3] = 65535, 0  # fully transparent blue
    raw4 = b"".join(b"\x00" + row.tobytes() for row in px4)
    path4 = tmp_path / "rgba16.png"
    path4.write_bytes(png_bytes(3, 2, 16, 6, raw4))
    assert load_rgb(path4).getpixel((0, 0)) == WHITE


def test_multiframe_gif_and_tiff_give_the_first_frame(tmp_path):
    frames = [Image.new("RGB", (12, 12), c) for c in (RED, GREEN, BLUE)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    tif = tmp_path / "pages.tif"
    frames[0].save(tif, save_all=True, append_images=frames[1:])
    for path in (gif, tif):
        out = load_rgb(path)
        assert out.mode == "RGB" and close(out.getpixel((5, 5)), RED), path


@pytest.mark.parametrize(
    ("fmt", "suffix"), [("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif"), ("PNG", "jpg")]
)
def test_other_formats_decode_by_content(tmp_path, fmt, suffix):
    path = tmp_path / f"img.{suffix}"  # a PNG named .jpg is fine: content decides
    Image.new("RGB", (40, 30), (20, 150, 220)).save(path, fmt, **({"quality": 95} if fmt == "WEBP" else {}))
    out = load_rgb(path, min_side=15)
    assert out.size == (20, 15)
    assert close(out.getpixel((10, 7)), (20, 150, 220))


def test_draft_decode_keeps_short_side_and_quality(tmp_path):
    rng = np.random.default_rng(1)
    small = rng.integers(0, 256, (25, 50, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((2000, 1000), Image.Resampling.BICUBIC)  # smooth content
    path = tmp_path / "big.jpg"
    big.save(path, quality=92)
    for min_side, size in [(250, (500, 250)), (300, (600, 300)), (1000, (2000, 1000)), (4000, (2000, 1000))]:
        assert load_rgb(path, min_side=min_side).size == size
    draft = np.asarray(load_rgb(path, min_side=250), dtype=np.float64)
    full = np.asarray(resize_short_side(load_rgb(path), 250), dtype=np.float64)
    psnr = 10 * np.log10(255**2 / np.mean((draft - full) ** 2))
    assert psnr > 35


@pytest.mark.parametrize(("size", "min_side"), [((683, 1024), 256), ((1539, 1024), 320), ((1001, 777), 100)])
def test_draft_and_full_decode_have_the_same_geometry(tmp_path, size, min_side):
    path = tmp_path / "odd.jpg"
    Image.new("RGB", size, (30, 90, 60)).save(path)
    drafted = load_rgb(path, min_side=min_side)
    assert drafted.size == resize_short_side(load_rgb(path), min_side).size
    assert min(drafted.size) == min_side


def test_resize_short_side_never_upsamples():
    img = Image.new("RGB", (300, 200))
    assert resize_short_side(img, 200) is img
    assert resize_short_side(img, 500) is img
    assert resize_short_side(img, 100).size == (150, 100)
    assert resize_short_side(Image.new("RGB", (200, 301)), 100).size == (100, 150)
    with pytest.raises(ValueError):
        resize_short_side(img, 0)


def test_result_is_detached_from_the_file(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.new("RGB", (20, 10), GREEN).save(path)
    out = load_rgb(path)
    path.unlink()
    assert close(out.getpixel((3, 3)), GREEN)
    assert not hasattr(out, "fp") or out.fp is None


# ---- broken files ----------------------------------------------------------------------------------


def expect_image_error(path: Path, *words: str) -> ImageError:
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    message = str(info.value)
    assert str(path) in message, message
    assert "Traceback" not in message
    for word in words:
        assert word in message.lower(), message
    return info.value


def test_truncated_jpeg(tmp_path):
    path = noisy_jpeg(tmp_path / "cut.jpg")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    expect_image_error(path, "truncated")
    with pytest.raises(ImageError):
        load_rgb(path, min_side=32)  # draft decode still reads every byte
    with pytest.raises(ImageError):
        check_image(path)


def test_truncated_png(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:-2000])
    expect_image_error(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    expect_image_error(path, "empty")


@pytest.mark.parametrize(
    ("content", "word"),
    [
        (b"this is not a picture\nreally\n", "text file"),
        (b"<!DOCTYPE html><html><body>Access denied</body></html>", "html"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "pdf"),
        (b"P6\n2 2\n255\n" + b"\x00" * 12, "not a supported image"),
    ],
)
def test_not_an_image_named_jpg(tmp_path, content, word):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    err = expect_image_error(path, word)
    assert err.hint


def test_missing_file_and_folder(tmp_path):
    expect_image_error(tmp_path / "nope.jpg", "not found")
    with pytest.raises(ImageError, match="folder"):
        load_rgb(tmp_path)


def test_decompression_bomb_header_is_refused_before_decoding(tmp_path):
    # 30000 x 30000 RGBA would need 3.6 GB; the file is ~100 bytes.
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_bytes(30000, 30000, 8, 6, b"\x00" * 10))
    assert bomb.stat().st_size < 200
    t0 = time.perf_counter()
    expect_image_error(bomb, "too large")
    with pytest.raises(ImageError):
        check_image(bomb)
    assert time.perf_counter() - t0 < 2  # no allocation or decode happened


def test_pixel_limit_is_ours_and_configurable(tmp_path):
    # 12000 x 12000 = 144 MP: above our 120 MP default, below PIL's hard limit (179 MP), so our own
    # header check refuses it, without PIL's DecompressionBombWarning leaking out.
    big = tmp_path / "big.png"
    big.write_bytes(png_bytes(12000, 12000, 8, 2, b""))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageError, match="144 MP"):
            load_rgb(big)
    small = tmp_path / "small.jpg"
    Image.new("RGB", (100, 100)).save(small)
    with pytest.raises(ImageError, match="H2F_MAX_PIXELS"):
        load_rgb(small, max_pixels=5000)
    assert load_rgb(small, max_pixels=10_000).size == (100, 100)


def test_max_pixels_env(monkeypatch):
    monkeypatch.setenv("H2F_MAX_PIXELS", "50_000_000")
    assert images._max_pixels_from_env() == 50_000_000
    monkeypatch.setenv("H2F_MAX_PIXELS", "lots")
    with pytest.raises(ConfigError, match="H2F_MAX_PIXELS"):
        images._max_pixels_from_env()


def test_load_rgb_bytes_names_the_upload(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (64, 32), RED).save(buf, "JPEG")
    assert load_rgb_bytes(buf.getvalue(), "upload.jpg", min_side=16).size == (32, 16)
    with pytest.raises(ImageError, match="upload.jpg"):
        load_rgb_bytes(buf.getvalue()[:300], "upload.jpg")
    with pytest.raises(ImageError, match="empty"):
        load_rgb_bytes(b"", "upload.jpg")


def test_check_image_ok(tmp_path):
    assert check_image(noisy_jpeg(tmp_path / "ok.jpg")) is None


# ---- real sheets and photos ------------------------------------------------------------------------


def test_real_sheets_and_photos(aml_sample):
    paths = sorted((aml_sample / "train" / "herbarium").rglob("*.jpg"))[:3]
    paths += sorted((aml_sample / "train" / "photo").rglob("*.jpg"))[:3]
    paths += sorted((aml_sample / "test").glob("*.jpg"))[:2]
    assert len(paths) == 8
    for path in paths:
        full = load_rgb(path)
        assert full.mode == "RGB" and min(full.size) >= 300
        small = load_rgb(path, min_side=224)
        assert small.mode == "RGB" and min(small.size) == 224
        ratio = (max(full.size) / min(full.size)) / (max(small.size) / min(small.size))
        assert abs(ratio - 1) < 0.01  # aspect kept
        check_image(path)


@pytest.mark.parametrize(
    ("data", "kind"),
    [(b"\xff\xd8\xff" + b"\x00" * 100, "JPEG"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 50, "PNG")],
)
def test_corrupt_header_after_valid_magic(data, kind):
    with pytest.raises(ImageError, match=f"starts like a {kind}") as info:
        load_rgb_bytes(data, "upload.bin")
    assert "BytesIO" not in str(info.value)
