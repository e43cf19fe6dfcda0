"""One image file -> the stored form cnncli trains on: ``(C, H, W)`` uint8, pixel_max 255.

Decoding uses Pillow (imported here, never at ``cnn --help``). The conversions, in order:

1. EXIF orientation applied (phone photos stand upright).
2. Palette images (``P``, ``PA``) expanded to RGB (RGBA when they carry transparency).
3. 16-bit images (``I;16``, ``I``) scaled to 8 bits: ``round(v * 255 / 65535)``.
4. Alpha composited onto black: ``round(v * alpha / 255)``.
5. Other modes (``1``, ``CMYK``, ``YCbCr``, ...) converted by Pillow to ``L`` or ``RGB``.
6. Channels: grayscale -> RGB repeats the channel; RGB -> grayscale is Pillow's ``L``
   conversion (ITU-R 601-2 luma).
7. Resized to exactly ``size`` (H, W) with Pillow's bilinear filter, aspect not kept.

``decode_image`` is the one function a folder dataset and ``cnn predict`` share.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnncli.errors import DataError
from cnncli.text import one_line

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "gif", "webp")
GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT = ("I", "I;16", "I;16B", "I;16L", "I;16N")
_ALPHA_MODES = ("LA", "La", "RGBA", "RGBa", "PA")
_TRANSPOSED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
_EXIF_ORIENTATION = 0x0112


class BadImage(DataError):
    """An image file that cannot be decoded (unreadable, truncated, not an image, too large)."""


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header says, before any pixel is decoded (height/width after EXIF
    orientation)."""

    mode: str
    height: int
    width: int

    @property
    def channels(self) -> int:
        """The default channel count: 1 for grayscale modes, else 3."""
        return 1 if self.mode in GRAY_MODES else 3


def _pil():
    from PIL import Image

    return Image


def _open(path: Path):
    """Open an image lazily (header only); bad files become BadImage naming the file."""
    Image = _pil()
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None  # reported by Image.open below
    if mode is not None and not stat.S_ISREG(mode):  # a named pipe would block open() forever
        kind = {stat.S_IFIFO: "a named pipe", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket",
                stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "not a file")
        raise BadImage(f"{path}: not a regular file ({kind}); an image must be a file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(f"{path}: refused as a decompression bomb ({_pixels(exc)}); Pillow's "
                       f"limit is {Image.MAX_IMAGE_PIXELS:,} pixels") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"{path}: not an image Pillow can read (wrong extension, or a damaged "
                       "file)") from None
    except OSError as exc:
        raise BadImage(f"{path}: cannot read ({exc.strerror or one_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file breaks a decoder in many ways
        raise BadImage(f"{path}: cannot decode ({type(exc).__name__}: {one_line(exc)})") from None


def _pixels(exc) -> str:
    text = one_line(exc)
    return text.split(" exceeds")[0] if " exceeds" in text else text


def probe_image(path) -> ImageInfo:
    """The mode and size of an image from its header (cheap: no pixel is decoded)."""
    path = Path(path)
    with _open(path) as im:
        w, h = im.size
        try:
            # A PNG's getexif() decodes the whole image when no eXIf chunk came before the
            # pixels; such a late chunk is applied when decoding (and caught by the caller's
            # size check), not read here.
            late = im.format == "PNG" and "exif" not in im.info
            orientation = None if late else im.getexif().get(_EXIF_ORIENTATION)
        except Exception:  # noqa: BLE001 - a broken EXIF block: leave the image as it is
            orientation = None
        if orientation in _TRANSPOSED:
            w, h = h, w
        return ImageInfo(im.mode, h, w)


def decode_image(path, size: tuple[int, int] | None = None, channels: int | None = None) -> np.ndarray:
    """Decode one image file and convert it to the stored form.

    Args:
        path: an image file Pillow reads (png, jpg, bmp, gif (first frame), webp, ...).
        size: (H, W) to resize to with Pillow's bilinear filter; None keeps the image's size.
        channels: 1 or 3; None: 1 for a grayscale image (modes in GRAY_MODES), else 3.
    Returns:
        (C, H, W) uint8, 255 for a full-intensity pixel.
    Raises:
        BadImage naming the file: unreadable, truncated, not an image, a decompression bomb.
    """
    path = Path(path)
    Image = _pil()
    with _open(path) as im:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
                out = to_stored(im, size, channels)
        except BadImage:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise BadImage(f"{path}: refused as a decompression bomb ({_pixels(exc)})") from None
        except OSError as exc:  # "image file is truncated", a broken zlib stream, ...
            raise BadImage(f"{path}: cannot decode ({exc.strerror or one_line(exc)}); the file "
                           "is damaged or truncated") from None
        except MemoryError:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile file breaks a decoder in many ways
            raise BadImage(f"{path}: cannot decode ({type(exc).__name__}: {one_line(exc)})") from None
    return out


def to_stored(im, size: tuple[int, int] | None = None, channels: int | None = None) -> np.ndarray:
    """A loaded Pillow image -> (C, H, W) uint8 (the conversions listed in the module docstring)."""
    from PIL import ImageOps

    Image = _pil()
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    want = channels or (1 if im.mode in GRAY_MODES else 3)
    im = ImageOps.exif_transpose(im)
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    if im.mode in _SIXTEEN_BIT:
        a = np.clip(np.asarray(im, dtype=np.int64), 0, 65535)
        im = Image.fromarray(np.rint(a * (255 / 65535)).astype(np.uint8), "L")
    if im.mode in _ALPHA_MODES:
        if im.mode in ("La", "RGBa"):  # premultiplied already: composited onto black
            im = im.convert("RGB" if im.mode == "RGBa" else "L")
        else:
            a = np.asarray(im.convert("RGBA"), dtype=np.float64)  # (H, W, 4)
            rgb = np.rint(a[..., :3] * a[..., 3:] / 255).astype(np.uint8)
            im = Image.fromarray(rgb, "RGB")  # for an LA image R = G = B: back to L exactly
    if im.mode not in ("L", "RGB"):
        im = im.convert("L" if im.mode in GRAY_MODES or im.mode == "F" else "RGB")
    if want == 1 and im.mode != "L":
        im = im.convert("L")
    elif want == 3 and im.mode != "RGB":
        im = im.convert("RGB")
    if size is not None and (im.height, im.width) != tuple(size):
        im = im.resize((int(size[1]), int(size[0])), Image.BILINEAR)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def resize_stored(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """img: (C, H, W) uint8 with C in (1, 3) -> (C, size[0], size[1]), resized with Pillow's
    bilinear filter exactly as ``decode_image(path, size)`` resizes."""
    Image = _pil()
    pic = Image.fromarray(img[0], "L") if img.shape[0] == 1 else \
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")
    a = np.asarray(pic.resize((int(size[1]), int(size[0])), Image.BILINEAR), dtype=np.uint8)
    return a[None] if a.ndim == 2 else np.ascontiguousarray(a.transpose(2, 0, 1))


def write_png(path, img: np.ndarray) -> None:
    """img: (C, H, W) uint8 with C in (1, 3) -> an 8-bit PNG (``L`` or ``RGB``). Not atomic by
    itself: ``cnn data export`` writes into a temporary folder renamed into place at the end."""
    Image = _pil()
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[0] not in (1, 3):
        raise DataError(f"{path}: only (1 or 3, H, W) uint8 images can be written as PNG, got "
                        f"{img.dtype} {img.shape}")
    pic = Image.fromarray(img[0], "L") if img.shape[0] == 1 else \
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)), "RGB")
    pic.save(path, format="PNG")


def to_eight_bit(x: np.ndarray, pixel_max: float) -> np.ndarray:
    """Stored images (any dtype, full intensity ``pixel_max``) -> uint8: ``x * 255 / pixel_max``
    rounded and clipped to [0, 255] (shapes' noise goes below 0 and above 1)."""
    return np.clip(np.rint(np.asarray(x, dtype=np.float64) * (255.0 / pixel_max)), 0, 255).astype(np.uint8)
