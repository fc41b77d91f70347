"""Checking and normalising input images before they go into shards.

Every input is fully decoded (a truncated file fails here, not in training). Photos become 8-bit RGB
JPEG, sketches 8-bit PNG (grey or RGB), both ``size`` x ``size``:

- photos: shorter side resized to ``size``, centre crop;
- sketches: padded to a square with white (never cropping a stroke), then resized.

Odd modes are converted deterministically: CMYK and YCbCr to RGB, 16/32-bit grey scaled to 8 bits,
palette and alpha images composited over white (a transparent sketch background becomes paper).
An image that already has the target size, an accepted mode and format is passed through byte for
byte (no re-encoding loss, and the cost of sharding is the cost of decoding).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from sbir.errors import BadImage, SbirError

PHOTO_FORMAT = ("JPEG", "jpg")
SKETCH_FORMAT = ("PNG", "png")
JPEG_QUALITY = 95
_PASS_MODES = {"photo": ("RGB",), "sketch": ("L", "RGB")}


def decode(data: bytes, max_pixels: int | None = None) -> Image.Image:
    """Fully decode ``data``; raise :class:`BadImage` with the reason when it cannot be used. ``max_pixels``:
    refuse a larger image from its header, before decoding it (Pillow's own limit, ~89 Mpixels, otherwise)."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if max_pixels is not None and image.width * image.height > max_pixels:
                raise BadImage(f"too many pixels ({image.width}x{image.height}; at most {max_pixels:,} accepted)")
            image.load()
    except UnidentifiedImageError:
        raise BadImage("not an image (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as error:
        raise BadImage(f"corrupt or truncated image: {error}") from None
    if image.width < 8 or image.height < 8:
        raise BadImage(f"image too small ({image.width}x{image.height})")
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """An RGB or L version of any PIL mode, alpha composited over white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        array = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.convert("RGBA")
        paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(paper, image).convert("RGB")
    if image.mode == "1":
        return image.convert("L")
    if image.mode in ("L", "RGB"):
        return image
    return image.convert("RGB")


def fit(image: Image.Image, modality: str, size: int) -> Image.Image:
    """Square ``size`` x ``size`` image: photos centre-cropped, sketches padded with white."""
    if image.size == (size, size):
        return image
    width, height = image.size
    if modality == "photo":
        scale = size / min(width, height)
        new = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
        left, top = (new[0] - size) // 2, (new[1] - size) // 2
        return image.crop((left, top, left + size, top + size))
    side = max(width, height)
    fill = 255 if image.mode == "L" else (255, 255, 255)
    square = Image.new(image.mode, (side, side), fill)
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return square.resize((size, size), Image.Resampling.LANCZOS, reducing_gap=3.0)


def encode(image: Image.Image, modality: str) -> bytes:
    buffer = io.BytesIO()
    if modality == "photo":
        image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=False)
    else:
        image.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def prepare(data: bytes, modality: str, size: int | None) -> tuple[bytes, str]:
    """Bytes and file extension of ``data`` made ready for a shard (see the module docstring).

    ``size`` None keeps the image's own size. Raises :class:`BadImage` for unusable input.
    """
    image = decode(data)
    wanted_format, extension = PHOTO_FORMAT if modality == "photo" else SKETCH_FORMAT
    if (image.format == wanted_format and image.mode in _PASS_MODES[modality]
            and (size is None or image.size == (size, size))):
        return data, extension
    image = to_8bit(image)
    if modality == "photo" and image.mode == "L":
        image = image.convert("RGB")
    if size is not None:
        image = fit(image, modality, size)
    return encode(image, modality), extension


def render_png(image: Image.Image) -> bytes:
    """PNG bytes of an image generated by the project (QuickDraw rasterisation)."""
    return encode(image, "sketch")


USER_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")


def load_user_image(path: Path | str, modality: str, size: int) -> Image.Image:
    """A person's own image (``sbir search``, ``sbir explain``) as a ``size`` x ``size`` RGB image.

    Any size, colour or grey, white or transparent background (composited over white), PNG/JPEG and the
    other common still formats; sketches padded to a square, photos centre-cropped (:func:`fit`).
    Anything else — a missing file, a folder, not an image, a truncated image, a blank sketch — raises
    :class:`SbirError` with the path and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise SbirError(f"{path}: no such file")
    if not path.is_file():
        raise SbirError(f"{path}: not a file")
    return user_image(path.read_bytes(), str(path), modality, size)


def user_image(data: bytes, name: str, modality: str, size: int, max_pixels: int | None = None) -> Image.Image:
    """:func:`load_user_image` of an image already read (an upload to ``sbir serve``); ``name`` names it in the
    :class:`SbirError` messages, ``max_pixels`` caps its size (:func:`decode`)."""
    try:
        image = decode(data, max_pixels)
    except BadImage as error:
        raise SbirError(f"{name}: {error}") from None
    if image.format not in USER_FORMATS:
        raise SbirError(f"{name}: {image.format} images are not accepted (use PNG or JPEG)")
    if getattr(image, "n_frames", 1) > 1:
        raise SbirError(f"{name}: an animation ({image.n_frames} frames), not a single image")
    image = fit(to_8bit(image).convert("RGB"), modality, size)
    if modality == "sketch":
        low, high = image.convert("L").getextrema()
        if high - low < 16:
            raise SbirError(f"{name}: the sketch is blank (one flat colour)")
    return image


@dataclass(frozen=True)
class ImageConfig:
    """What a backbone expects as input: ``size`` x ``size`` RGB, ``(x / 255 - mean) / std``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"


_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def load_image(data: bytes, size: int, interpolation: str = "bicubic") -> np.ndarray:
    """uint8 ``[size, size, 3]`` RGB array of an encoded image (grey replicated to 3 channels)."""
    image = Image.open(io.BytesIO(data))
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    if image.size != (size, size):  # before the grey -> RGB copy: a third of the work for grey sketches
        image = image.resize((size, size), _RESAMPLE[interpolation])
    return np.asarray(image.convert("RGB") if image.mode == "L" else image, dtype=np.uint8)
