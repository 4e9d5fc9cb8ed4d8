"""Image transforms: the paper's augmentation family t_v, and deterministic evaluation transforms.

Paper (Appendix A), applied in sequence with torchvision:

1. random crop covering an **area** fraction in [0.6, 1.0] of the image (aspect ratio of the crop in
   [3/4, 4/3], torchvision's default; the paper does not give one). The crop is NOT resized here;
2. horizontal flip with p = 0.5;
3. affine: rotation in [-20, 20] degrees, translation up to 0.1 of width/height, scale in [0.95, 1.05];
4. colour jitter: brightness and contrast factors in [0.6, 1.4] (no saturation/hue: radiographs are monochrome);
5. Gaussian blur with sigma in [0.1, 3.0] (kernel 23 px, about +-3.7 sigma at the largest sigma);
6. finally resize to 224 x 224.

Inputs are one-channel uint8 images (see :func:`convirt.data.images.load_image`); the output is a float tensor
(3, 224, 224) normalised with ImageNet statistics, the channel repeated because ImageNet-shaped encoders expect
three channels. All randomness comes from torch's global generator, so a caller that seeds it per sample gets
reproducible views (the paired dataset does, which makes a resumed run draw the same views).

:func:`paper_augmentation` is the reference renderer (``data.augment.pipeline: torchvision``); the default renders
the same parameter draws in one warp (:mod:`convirt.data.views`, which also picks the renderer of a config).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms import RandomResizedCrop as _RRC
from torchvision.transforms.v2 import functional as TF

from convirt.config import AugmentConfig
from convirt.imagenet import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class AugmentationParams:
    """The augmentation family's parameters; defaults are the paper's (Appendix A)."""

    crop_area: tuple[float, float] = (0.6, 1.0)
    crop_aspect_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_p: float = 0.5
    rotation_degrees: float = 20.0
    translate: float = 0.1
    affine_scale: tuple[float, float] = (0.95, 1.05)
    brightness: tuple[float, float] = (0.6, 1.4)
    contrast: tuple[float, float] = (0.6, 1.4)
    blur_sigma: tuple[float, float] = (0.1, 3.0)
    blur_kernel_size: int = 23
    output_size: int = 224

    @classmethod
    def from_config(cls, a: AugmentConfig) -> AugmentationParams:
        """The parameters of a config's ``data.augment`` section."""
        return cls(
            crop_area=tuple(a.crop_area),
            crop_aspect_ratio=tuple(a.crop_aspect_ratio),
            hflip_p=a.hflip_p,
            rotation_degrees=a.rotation_degrees,
            translate=a.translate,
            affine_scale=tuple(a.affine_scale),
            brightness=tuple(a.brightness),
            contrast=tuple(a.contrast),
            blur_sigma=tuple(a.blur_sigma),
            blur_kernel_size=a.blur_kernel_size,
            output_size=a.output_size,
        )


class RandomAreaCrop(torch.nn.Module):
    """Crop a random region covering ``area`` of the image (aspect ratio in ``ratio``) without resizing it."""

    def __init__(self, area: Sequence[float], ratio: Sequence[float]) -> None:
        super().__init__()
        self.area, self.ratio = tuple(area), tuple(ratio)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        top, left, height, width = _RRC.get_params(image, list(self.area), list(self.ratio))
        return TF.crop(image, top, left, height, width)

    def extra_repr(self) -> str:
        return f"area={self.area}, ratio={self.ratio}"


class RandomGaussianBlur(torch.nn.Module):
    """Gaussian blur with sigma ~ U[sigma_min, sigma_max], as torchvision's GaussianBlur (reflect padding, same
    kernel), computed as two 1-D convolutions: several times faster on CPU for single-channel images."""

    def __init__(self, kernel_size: int, sigma: Sequence[float]) -> None:
        super().__init__()
        if kernel_size % 2 == 0 or kernel_size < 3:
            raise ValueError("blur kernel size must be odd and >= 3")
        self.kernel_size, self.sigma = kernel_size, (float(sigma[0]), float(sigma[1]))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        sigma = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item())
        return gaussian_blur(image, self.kernel_size, sigma)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, sigma={self.sigma}"


def gaussian_weights(half: int, sigma: float) -> torch.Tensor:
    """The ``2 half + 1`` taps of a normalised 1-D Gaussian of ``sigma`` pixels."""
    offsets = torch.arange(-half, half + 1, dtype=torch.float32)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (C, H, W) image; uint8 in -> uint8 out (rounded), float in -> float out.

    Reflect padding needs the padding to be smaller than the side, so along a side shorter than the kernel the
    kernel is cut to ``2 * (side - 1) + 1`` taps (renormalised); a side of 1 px is not blurred along. Any image
    size works; on sides longer than ``kernel_size // 2`` this is exactly torchvision's ``GaussianBlur``.
    """
    half = kernel_size // 2
    channels, height, width = image.shape[0], image.shape[-2], image.shape[-1]
    half_h, half_w = min(half, height - 1), min(half, width - 1)
    x = image.float().unsqueeze(0)
    x = torch.nn.functional.pad(x, (half_w, half_w, half_h, half_h), mode="reflect")
    along_w = gaussian_weights(half_w, sigma).view(1, 1, 1, -1).expand(channels, 1, 1, -1)
    along_h = gaussian_weights(half_h, sigma).view(1, 1, -1, 1).expand(channels, 1, -1, 1)
    x = torch.nn.functional.conv2d(x, along_w, groups=channels)
    x = torch.nn.functional.conv2d(x, along_h, groups=channels)
    x = x.squeeze(0)
    if image.dtype == torch.uint8:
        return x.round_().clamp_(0, 255).to(torch.uint8)
    return x.to(image.dtype)


class ToModelInput(torch.nn.Module):
    """uint8 (1 or 3, H, W) -> float (3, H, W), scaled to [0, 1] and ImageNet-normalised."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        image = image.float().div_(255.0)
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return (image - self.mean) / self.std


class PadToSquare(torch.nn.Module):
    """Zero-pad (black) the shorter side symmetrically so the image is square (Appendix B input pipeline)."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        return TF.pad(image, [left, top, side - width - left, side - height - top], fill=0)


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    return TF.pil_to_tensor(image)


def paper_augmentation(params: AugmentationParams | None = None) -> v2.Compose:
    """The pretraining view t_v (uint8 tensor in, normalised float tensor out)."""
    p = params or AugmentationParams()
    return v2.Compose(
        [
            RandomAreaCrop(p.crop_area, p.crop_aspect_ratio),
            v2.RandomHorizontalFlip(p.hflip_p),
            v2.RandomAffine(
                degrees=p.rotation_degrees,
                translate=(p.translate, p.translate),
                scale=p.affine_scale,
                interpolation=InterpolationMode.BILINEAR,
            ),
            v2.ColorJitter(brightness=p.brightness, contrast=p.contrast),
            RandomGaussianBlur(p.blur_kernel_size, p.blur_sigma),
            v2.Resize((p.output_size, p.output_size), antialias=True),
            ToModelInput(),
        ]
    )


def resize_transform(size: int = 224) -> v2.Compose:
    """Deterministic view for pretraining validation and embedding: resize to size x size (like the views)."""
    return v2.Compose([v2.Resize((size, size), antialias=True), ToModelInput()])


def pad_resize_transform(size: int = 224) -> v2.Compose:
    """Deterministic classification input (Appendix B): zero-pad to square, then resize to size x size."""
    return v2.Compose([PadToSquare(), v2.Resize((size, size), antialias=True), ToModelInput()])
