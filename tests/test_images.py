"""One image file -> (C, H, W) uint8: every Pillow mode and conversion the README states, EXIF
orientation, resizing, and the files Pillow refuses."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from cnncli.data.images import BadImage, decode_image, probe_image, resize_stored, to_eight_bit

RNG = np.random.default_rng(0)
GRAY = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, (5, 7), dtype=np.uint8)
RGB = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)


def save(tmp_path, im, name="im.png", **kw):
    path = tmp_path / name
    im.save(path, **kw)
    return path


def luma(rgb):
    """Pillow's RGB -> L: ITU-R 601-2 luma in 16-bit fixed point, rounded."""
    r, g, b = (rgb[..., i].astype(np.int64) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)


def test_grayscale_and_rgb_pass_through(tmp_path):
    out = decode_image(save(tmp_path, Image.fromarray(GRAY)))
    assert out.dtype == np.uint8 and out.shape == (1, 5, 7) and (out[0] == GRAY).all()
    out = decode_image(save(tmp_path, Image.fromarray(RGB)))
    assert out.shape == (3, 5, 7) and (out == RGB.transpose(2, 0, 1)).all()


def test_gray_to_rgb_repeats_the_channel_and_rgb_to_gray_is_pillows_luma(tmp_path):
    out = decode_image(save(tmp_path, Image.fromarray(GRAY)), channels=3)
    assert out.shape == (3, 5, 7) and all((out[c] == GRAY).all() for c in range(3))
    out = decode_image(save(tmp_path, Image.fromarray(RGB)), channels=1)
    assert out.shape == (1, 5, 7) and (out[0] == luma(RGB)).all()


def test_bilevel_images_become_0_and_255(tmp_path):
    bits = GRAY > 127
    path = save(tmp_path, Image.fromarray(bits))
    assert probe_image(path).mode == "1" and probe_image(path).channels == 1
    out = decode_image(path)
    assert (out[0] == np.where(bits, 255, 0)).all()


def test_alpha_is_composited_onto_black(tmp_path):
    la = Image.merge("LA", [Image.fromarray(GRAY), Image.fromarray(ALPHA)])
    path = save(tmp_path, la)
    assert probe_image(path).mode == "LA" and probe_image(path).channels == 1
    expected = np.rint(GRAY * (ALPHA / 255.0)).astype(np.uint8)
    assert (decode_image(path)[0] == expected).all()

    rgba = Image.merge("RGBA", [*Image.fromarray(RGB).split(), Image.fromarray(ALPHA)])
    out = decode_image(save(tmp_path, rgba))
    expected = np.rint(RGB * (ALPHA[..., None] / 255.0)).astype(np.uint8)
    assert out.shape == (3, 5, 7) and (out == expected.transpose(2, 0, 1)).all()


def test_palette_images_are_expanded(tmp_path):
    im = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    path = save(tmp_path, im)
    assert probe_image(path).mode == "P" and probe_image(path).channels == 3
    palette = np.array(im.getpalette()[:8 * 3], dtype=np.uint8).reshape(-1, 3)
    expected = palette[np.asarray(im)]  # (H, W, 3)
    assert (decode_image(path) == expected.transpose(2, 0, 1)).all()

    im.info["transparency"] = 0  # palette entry 0 is transparent: composited to black
    path = save(tmp_path, im, "transparent.png", transparency=0)
    expected[np.asarray(im) == 0] = 0
    assert (decode_image(path) == expected.transpose(2, 0, 1)).all()


@pytest.mark.parametrize("dtype, name", [(np.uint16, "im.png"), (np.int32, "im.tif")])
def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path, dtype, name):
    values = np.array([[0, 1, 128, 129, 257], [32767, 32768, 65279, 65534, 65535]], dtype=dtype)
    path = save(tmp_path, Image.fromarray(values), name)  # a 16-bit PNG; a 32-bit "I" TIFF
    assert probe_image(path).mode in ("I;16", "I") and probe_image(path).channels == 1
    expected = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    out = decode_image(path)
    assert (out[0] == expected).all(), out[0]
    assert out[0, 1, 4] == 255 and out[0, 0, 4] == 1  # 257 = 65535 / 255: exactly one step


def test_other_modes_go_through_pillows_conversion(tmp_path):
    path = save(tmp_path, Image.fromarray(RGB).convert("CMYK"), "cmyk.jpg", quality=95)
    with Image.open(path) as im:
        assert im.mode == "CMYK"
        expected = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    assert (decode_image(path) == expected).all()


@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)),
                                               (6, lambda a: np.rot90(a, -1)),
                                               (8, lambda a: np.rot90(a, 1)),
                                               (2, lambda a: a[:, ::-1])])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(tmp_path, Image.fromarray(GRAY), exif=exif)
    upright = turn(GRAY)
    info = probe_image(path)
    assert (info.height, info.width) == upright.shape
    assert (decode_image(path)[0] == upright).all()


def test_resize_is_pillows_bilinear_to_exactly_h_by_w(tmp_path):
    path = save(tmp_path, Image.fromarray(RGB))
    out = decode_image(path, size=(9, 4))
    assert out.shape == (3, 9, 4)
    expected = np.asarray(Image.fromarray(RGB).resize((4, 9), Image.Resampling.BILINEAR))
    assert (out == expected.transpose(2, 0, 1)).all()
    assert (decode_image(path, size=(5, 7)) == RGB.transpose(2, 0, 1)).all()  # same size: as is
    # cnn predict decodes once, then resizes the stored image: the same pixels
    for channels in (1, 3):
        assert (resize_stored(decode_image(path, channels=channels), (9, 4))
                == decode_image(path, size=(9, 4), channels=channels)).all()


def test_files_pillow_cannot_read_raise_bad_image_naming_the_file(tmp_path, monkeypatch):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(BadImage, match="notes.png: not an image"):
        decode_image(text)
    whole = save(tmp_path, Image.fromarray(RGB), "whole.png").read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(BadImage, match="cut.png: cannot decode .*truncated"):
        decode_image(cut)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 35 pixels: over the limit, under twice it
    with pytest.raises(BadImage, match="whole.png: refused as a decompression bomb"):
        decode_image(tmp_path / "whole.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # over twice the limit: Pillow's error
    with pytest.raises(BadImage, match="whole.png: refused as a decompression bomb"):
        probe_image(tmp_path / "whole.png")


def test_to_eight_bit_scales_rounds_and_clips():
    x = np.array([-0.2, 0.0, 0.5, 1.0, 1.3])
    assert to_eight_bit(x, 1.0).tolist() == [0, 0, 128, 255, 255]
    assert to_eight_bit(np.array([0, 1, 8, 16], np.uint8), 16.0).tolist() == [0, 16, 128, 255]


_FORMATS = {}


def _valid_file(fmt):
    """A small valid image file's bytes in ``fmt`` (made once)."""
    if fmt not in _FORMATS:
        import io

        buf = io.BytesIO()
        im = Image.fromarray(RGB)
        (im.convert("P") if fmt == "GIF" else im).save(buf, format=fmt)
        _FORMATS[fmt] = buf.getvalue()
    return _FORMATS[fmt]


@settings(max_examples=60, deadline=None)
@given(fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]), cut=st.floats(0.0, 1.0),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=4))
def test_damaged_files_decode_or_raise_bad_image_and_nothing_else(tmp_path_factory, fmt, cut, flips):
    """A valid file cut short and with bytes overwritten: decoded to (C, H, W) uint8 or refused
    with BadImage naming it; no other exception leaks out."""
    data = bytearray(_valid_file(fmt))
    data = data[: int(len(data) * cut)]
    for where, value in flips:
        if data:
            data[min(int(where * len(data)), len(data) - 1)] = value
    path = tmp_path_factory.mktemp("hostile") / f"damaged.{fmt.lower()}"
    path.write_bytes(bytes(data))
    try:
        out = decode_image(path, size=(4, 4))
    except BadImage as exc:
        assert str(exc).startswith(str(path))
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[1:] == (4, 4)
