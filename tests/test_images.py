"""Image loading by content: wrong extensions, RGBA, 16-bit, palette, DICOM, and clear errors."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convirt.data.images import load_image, resize_longer_side
from convirt.errors import ImageLoadError
from prepare_fixtures import write_png_header


def test_png_named_jpg_and_rgba(tmp_path: Path) -> None:
    rgba = np.zeros((20, 30, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 255
    rgba[:, :10, 3] = 0  # transparent band composites onto black
    path = tmp_path / "actually_png.jpg"
    Image.fromarray(rgba, mode="RGBA").save(path, format="PNG")
    image = load_image(path, mode="RGB")
    assert image.mode == "RGB" and image.size == (30, 20)
    pixels = np.asarray(image)
    assert (pixels[:, :10] == 0).all() and (pixels[:, 10:] == 200).all()


def test_sixteen_bit_is_scaled_to_full_range(tmp_path: Path) -> None:
    data = np.linspace(1000, 4095, 64 * 64).reshape(64, 64).astype(np.uint16)
    path = tmp_path / "xray16.png"
    Image.fromarray(data).save(path)
    assert Image.open(path).mode.startswith("I")
    pixels = np.asarray(load_image(path, mode="L"))
    assert pixels.dtype == np.uint8 and pixels.min() == 0 and pixels.max() == 255
    assert (np.diff(pixels.ravel().astype(int)) >= 0).all()  # monotone mapping


def test_grayscale_to_three_channels_and_palette(tmp_path: Path) -> None:
    gray = tmp_path / "gray.jpeg"
    Image.fromarray(np.full((8, 8), 77, dtype=np.uint8)).save(gray, quality=100)
    rgb = np.asarray(load_image(gray, mode="RGB"))
    assert rgb.shape == (8, 8, 3) and np.all(np.abs(rgb.astype(int) - 77) <= 1)
    palette = tmp_path / "palette.gif"
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).convert("P").save(palette)
    assert load_image(palette, mode="L").mode == "L"


def test_dicom_monochrome1_inverted_and_rescaled(tmp_path: Path) -> None:
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    def write(path: Path, photometric: str) -> None:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 4, 4, 1
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = 2, -100
        ds.PixelData = np.arange(16, dtype=np.uint16).reshape(4, 4).tobytes()
        ds.save_as(path, enforce_file_format=True)

    write(tmp_path / "mono2.dcm", "MONOCHROME2")
    write(tmp_path / "mono1.bin", "MONOCHROME1")  # by content, not extension
    mono2 = np.asarray(load_image(tmp_path / "mono2.dcm"))
    mono1 = np.asarray(load_image(tmp_path / "mono1.bin"))
    assert mono2[0, 0] == 0 and mono2[3, 3] == 255
    np.testing.assert_array_equal(mono1, 255 - mono2)
    assert pydicom  # imported for the writer above


def test_missing_empty_and_corrupt_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageLoadError, match=r"missing\.png: file not found"):
        load_image(tmp_path / "missing.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(ImageLoadError, match=r"empty\.jpg: file is empty"):
        load_image(empty)
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageLoadError, match=r"junk\.jpg: not a recognised image format"):
        load_image(junk)
    truncated = tmp_path / "truncated.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ImageLoadError, match=r"truncated\.jpg"):
        load_image(truncated)


def test_resize_longer_side() -> None:
    image = Image.new("L", (512, 300))
    assert resize_longer_side(image, 256).size == (256, 150)
    assert resize_longer_side(Image.new("L", (100, 200)), 256).size == (128, 256)


@pytest.mark.parametrize("side", [10_000, 20_000])  # 100 M pixels: PIL's warning; 400 M pixels: PIL's error
def test_decompression_bombs_are_image_load_errors_without_a_warning(tmp_path: Path, side: int) -> None:
    path = write_png_header(tmp_path / "bomb.png", side, side)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageLoadError, match=rf"bomb\.png: refused, too large to decode safely: .*{side * side}"):
            load_image(path)
    assert not caught


def test_nan_and_infinite_pixels_become_black_without_a_warning(tmp_path: Path) -> None:
    values = np.array([[np.nan, 0.0, 1.0], [2.0, np.inf, 4.0]], dtype=np.float32)
    Image.fromarray(values, mode="F").save(tmp_path / "float.tif")
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), mode="F").save(tmp_path / "nan.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pixels = np.asarray(load_image(tmp_path / "float.tif"))
        all_nan = np.asarray(load_image(tmp_path / "nan.tif"))
    # finite range 0..4 -> 0..255 (rounded half up); NaN and +inf -> 0
    assert pixels.tolist() == [[0, 0, 64], [128, 0, 255]]
    assert all_nan.shape == (4, 4) and not all_nan.any()
