"""The augmentation family t_v has the paper's parameters (Appendix A) and behaves as specified."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from convirt.config import Config
from convirt.data.transforms import (
    AugmentationParams,
    PadToSquare,
    RandomAreaCrop,
    RandomGaussianBlur,
    gaussian_blur,
    pad_resize_transform,
    paper_augmentation,
)
from convirt.data.views import image_transforms


def test_pipeline_has_the_papers_parameters_in_order() -> None:
    steps = paper_augmentation().transforms
    names = [type(s).__name__ for s in steps]
    assert names == [
        "RandomAreaCrop",
        "RandomHorizontalFlip",
        "RandomAffine",
        "ColorJitter",
        "RandomGaussianBlur",
        "Resize",
        "ToModelInput",
    ]
    crop, flip, affine, jitter, blur, resize, _ = steps
    assert crop.area == (0.6, 1.0)  # an AREA fraction, not an aspect ratio
    assert flip.p == 0.5
    assert list(affine.degrees) == [-20.0, 20.0] and affine.translate == (0.1, 0.1)
    assert affine.scale == (0.95, 1.05)
    assert jitter.brightness == (0.6, 1.4) and jitter.contrast == (0.6, 1.4)
    assert jitter.saturation is None and jitter.hue is None  # monochrome: no saturation/hue
    assert blur.sigma == (0.1, 3.0)
    assert list(resize.size) == [224, 224]


def test_config_defaults_build_the_paper_pipeline() -> None:
    assert image_transforms(Config(), train=True).params == AugmentationParams()  # fused (tests/test_fused_views.py)
    config = Config()
    config.data.augment.pipeline = "torchvision"
    steps = image_transforms(config, train=True).transforms
    assert steps[0].area == (0.6, 1.0) and steps[4].sigma == (0.1, 3.0)


def test_crop_area_fraction_is_within_range() -> None:
    torch.manual_seed(0)
    image = torch.zeros(1, 200, 250, dtype=torch.uint8)
    crop = RandomAreaCrop((0.6, 1.0), (3 / 4, 4 / 3))
    fractions = []
    for _ in range(300):
        out = crop(image)
        fractions.append(out.shape[-1] * out.shape[-2] / (200 * 250))
    assert min(fractions) >= 0.58 and max(fractions) <= 1.0  # integer rounding of the side lengths
    assert max(fractions) - min(fractions) > 0.3  # the range is really sampled


def test_blur_matches_torchvision_and_samples_sigma() -> None:
    image = torch.randint(0, 256, (1, 40, 50), dtype=torch.uint8).float()
    for sigma in (0.5, 1.7, 3.0):
        torch.testing.assert_close(
            gaussian_blur(image, 23, sigma), TF.gaussian_blur(image, [23, 23], [sigma, sigma]), atol=1e-3, rtol=1e-5
        )
    blur = RandomGaussianBlur(23, (0.1, 3.0))
    torch.manual_seed(3)
    sigmas = [float(torch.empty(1).uniform_(0.1, 3.0)) for _ in range(5)]
    torch.manual_seed(3)
    for sigma in sigmas:
        torch.testing.assert_close(blur(image), gaussian_blur(image, 23, sigma))


def test_output_is_normalised_three_channel_and_reproducible() -> None:
    image = torch.randint(0, 256, (1, 256, 200), dtype=torch.uint8)
    transform = paper_augmentation(AugmentationParams(output_size=96))
    torch.manual_seed(7)
    first = transform(image)
    torch.manual_seed(7)
    second = transform(image)
    assert first.shape == (3, 96, 96) and first.dtype == torch.float32
    torch.testing.assert_close(first, second)
    # The single radiograph channel is repeated: un-normalised, all three channels are the same image.
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    restored = first * std.view(3, 1, 1) + mean.view(3, 1, 1)
    torch.testing.assert_close(restored[0], restored[1])
    torch.testing.assert_close(restored[0], restored[2])


def test_pad_to_square_then_resize() -> None:
    image = torch.full((1, 10, 20), 255, dtype=torch.uint8)
    square = PadToSquare()(image)
    assert square.shape == (1, 20, 20)
    assert square[0, :5].sum() == 0 and square[0, 15:].sum() == 0 and (square[0, 5:15] == 255).all()
    assert pad_resize_transform(32)(image).shape == (3, 32, 32)


@pytest.mark.parametrize("size", [1, 3])
def test_three_channel_inputs_are_accepted(size: int) -> None:
    assert paper_augmentation(AugmentationParams(output_size=32))(
        torch.randint(0, 256, (size, 64, 64), dtype=torch.uint8)
    ).shape == (3, 32, 32)


@pytest.mark.parametrize("shape", [(1, 1, 256), (1, 256, 1), (1, 1, 1), (1, 3, 40), (1, 16, 256)])
def test_augmentation_takes_any_image_size(shape) -> None:
    torch.manual_seed(0)
    out = paper_augmentation()(torch.randint(0, 256, shape, dtype=torch.uint8))
    assert out.shape == (3, 224, 224) and torch.isfinite(out).all()


def test_blur_on_a_side_shorter_than_the_kernel_uses_the_taps_that_fit() -> None:
    row = np.array([0, 0, 255, 0, 0], dtype=np.float64)
    blurred = gaussian_blur(torch.tensor(row, dtype=torch.float32).view(1, 1, 5), kernel_size=23, sigma=1.0)
    # width 5: 4 taps each side (reflect padding needs pad < 5); height 1: no blur along it
    offsets = np.arange(-4, 5)
    weights = np.exp(-0.5 * offsets**2)
    weights /= weights.sum()
    padded = np.pad(row, 4, mode="reflect")
    expected = [float((padded[i : i + 9] * weights).sum()) for i in range(5)]
    assert blurred.view(-1).tolist() == pytest.approx(expected, abs=1e-4)
