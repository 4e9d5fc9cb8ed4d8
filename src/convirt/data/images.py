"""Image loading by content, not by file extension.

Radiographs arrive as JPEG, PNG (sometimes named ``.jpg``), 16-bit PNG/TIFF, RGBA screenshots, palette images
and DICOM. :func:`load_image` opens all of them by looking at the bytes, and returns an 8-bit PIL image in the
requested mode. Radiographs are monochrome, so the training pipelines load ``"L"`` (one channel, three times less
augmentation work) and repeat it to three channels at the end; ``"RGB"`` is available for other callers.

Conversion rules (documented because they change pixel values):

- 16-bit and 32-bit integer or float images are min-max scaled to 0..255 over the range of their finite pixels;
  NaN and infinite pixels become 0 (an image with no finite pixel, or a constant one, is all 0).
- RGBA / LA images are composited onto black (radiograph backgrounds are dark) before conversion.
- Colour images requested as ``"L"`` are converted with the ITU-R 601-2 luma transform (PIL's default).
- DICOM (detected by the ``DICM`` marker at byte 128) is decoded with pydicom: modality rescale
  (slope/intercept) applied, MONOCHROME1 inverted so bone is bright, then min-max scaled to 0..255.

Files whose header claims more pixels than PIL decodes without a decompression-bomb warning
(``PIL.Image.MAX_IMAGE_PIXELS``, about 89 million: 9459 x 9459) are refused with an :class:`ImageLoadError` before
any pixel is decoded; the largest radiographs are about 4300 x 3500 (15 million pixels).
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from convirt.errors import ImageLoadError

Mode = Literal["L", "RGB"]

# Truncated JPEGs are common in scraped collections; refuse them rather than silently returning grey blocks.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_dicom(path: str | os.PathLike) -> bool:
    """True when the file carries the DICOM preamble marker (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _scale_to_uint8(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    finite = np.isfinite(array)
    if not finite.any():
        return np.zeros(array.shape, dtype=np.uint8)
    low, high = float(array[finite].min()), float(array[finite].max())
    if high <= low:
        return np.zeros(array.shape, dtype=np.uint8)
    scaled = np.clip((np.where(finite, array, low) - low) * (255.0 / (high - low)) + 0.5, 0, 255)
    return scaled.astype(np.uint8)


def open_image(path: str | os.PathLike, data: io.BytesIO | None = None) -> Image.Image:
    """``PIL.Image.open`` (lazy: the header only) that refuses decompression bombs with an :class:`ImageLoadError`.

    A file over ``PIL.Image.MAX_IMAGE_PIXELS`` is refused rather than decoded with a warning on the console.
    ``data``: the file's bytes when already read (``path`` then only names it in messages).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(data if data is not None else path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageLoadError(str(path), f"refused, too large to decode safely: {exc}") from exc


def dicom_to_array(path: str | os.PathLike) -> np.ndarray:
    """Decode a DICOM file to an 8-bit monochrome array (rescale applied, MONOCHROME1 inverted)."""
    try:
        import pydicom
    except ImportError as exc:  # pragma: no cover - pydicom is a declared dependency
        raise ImageLoadError(str(path), "DICOM file but pydicom is not installed (pip install pydicom)") from exc
    try:
        dataset = pydicom.dcmread(str(path))
        pixels = dataset.pixel_array.astype(np.float32)
    except Exception as exc:  # pydicom raises many types for corrupt or compressed-without-codec data
        raise ImageLoadError(str(path), f"DICOM pixel data could not be decoded ({exc})") from exc
    if pixels.ndim == 3 and pixels.shape[-1] not in (3, 4):
        pixels = pixels[0]  # multi-frame: take the first frame
    slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
    pixels = pixels * slope + intercept
    if str(getattr(dataset, "PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        pixels = pixels.max() - pixels
    if pixels.ndim == 3:
        pixels = pixels[..., :3].mean(axis=-1)
    return _scale_to_uint8(pixels)


def _to_8bit(image: Image.Image) -> Image.Image:
    """Bring any PIL image to an 8-bit mode (L, RGB or RGBA/LA for later compositing)."""
    if image.mode in ("L", "RGB", "RGBA", "LA"):
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image)), mode="L")
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK, YCbCr, LAB, HSV ...


def _drop_alpha(image: Image.Image) -> Image.Image:
    if image.mode not in ("RGBA", "LA"):
        return image
    base_mode = "RGB" if image.mode == "RGBA" else "L"
    background = Image.new(base_mode, image.size, 0)
    background.paste(image.convert(base_mode), mask=image.getchannel("A"))
    return background


def load_image(path: str | os.PathLike, mode: Mode = "L") -> Image.Image:
    """Load ``path`` as an 8-bit PIL image in ``mode`` ("L" or "RGB"), whatever its extension says.

    Raises :class:`ImageLoadError` naming the file when it is missing, empty, or cannot be decoded.
    """
    if mode not in ("L", "RGB"):
        raise ValueError(f"mode must be 'L' or 'RGB', not {mode!r}")
    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(str(path), "file not found (check the manifest path and the image root)")
    if path.stat().st_size == 0:
        raise ImageLoadError(str(path), "file is empty (a download or copy was interrupted)")
    if is_dicom(path):
        image = Image.fromarray(dicom_to_array(path), mode="L")
    else:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
            image = open_image(path, io.BytesIO(data))
            image.load()
        except UnidentifiedImageError as exc:
            raise ImageLoadError(str(path), "not a recognised image format") from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageLoadError(str(path), f"image data is corrupt or truncated ({exc})") from exc
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image = _drop_alpha(_to_8bit(image))
    return image if image.mode == mode else image.convert(mode)


def resize_longer_side(image: Image.Image, size: int) -> Image.Image:
    """Resize so the longer side equals ``size`` (aspect ratio kept); images already that size are returned as is."""
    width, height = image.size
    longer = max(width, height)
    if longer == size:
        return image
    scale = size / longer
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS)
