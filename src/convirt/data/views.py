"""The paper's augmentation family t_v rendered in one warp: the fused pipeline (``data.augment.pipeline: fused``),
and :func:`image_transforms`, which picks the renderer of a config's training views.

The reference pipeline (:func:`convirt.data.transforms.paper_augmentation`, torchvision modules applied one after
another at the crop's resolution) spends most of its time on the Gaussian blur of a differently sized crop each
time and on resampling twice (affine, then resize). This module splits a view into two steps:

1. :class:`ViewSampler` draws all parameters of a view (:class:`ViewParams`) from torch's global generator with
   the reference's own torchvision code, in the reference's order: ``RandomResizedCrop.get_params`` for the crop
   box, one ``torch.rand`` for the flip, ``RandomAffine.make_params`` (angle, translation rounded to whole pixels
   of the crop, scale), ``ColorJitter.make_params`` (brightness and contrast factors and their random order),
   one uniform draw of the blur sigma. The same seed therefore gives the same parameters as the reference.
2. :func:`render_view` renders them: crop, flip, affine (about the crop's centre) and the final resize are one
   2x3 matrix from output pixels to crop pixels, sampled once with ``grid_sample`` (bilinear) straight at the
   output size, with torchvision's ``fill=0`` border (zeros outside the crop, times the sampled all-ones mask);
   brightness and contrast follow in the drawn order at the output resolution; then the Gaussian blur, at the
   output resolution with sigma and kernel half-width scaled by ``output_size / crop side`` along each axis (the
   reference blurs the crop, then resizes it: a Gaussian of sigma s followed by a resize by r is a Gaussian of
   sigma s * r), as two small matrix products (one fixed shape whatever the crop, which is what makes it fast).

Approximations, all small (``tests/test_fused_views.py`` bounds the pixel difference for the same parameters, under
one grey level on average, and compares the distribution of many views): one bilinear resampling instead of two;
contrast blends with the mean of the view at the output resolution, not of the crop (the same image resampled);
brightness clamps at the output resolution. A crop more than 1.5 times the output size along a side is first
resized to the output size with antialiasing (as the reference's final ``Resize(antialias=True)``), so the warp
never downsamples by more than 1.5 / 0.95 (the affine's smallest scale); the black border then ramps over one
output pixel, as the reference's resize makes it. The reference's uint8 steps are mirrored cheaply in float: the
warp's output is rounded, and brightness and contrast truncate (torchvision converts back to uint8 after each:
without it the fused views would be about one grey level brighter on average).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop as _RRC

from convirt.config import Config
from convirt.data.transforms import (
    AugmentationParams,
    ToModelInput,
    gaussian_weights,
    paper_augmentation,
    resize_transform,
)

# A crop larger than this many times the output size (along a side) is resized first, with antialiasing.
MAX_WARP_DOWNSCALE = 1.5
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights (contrast of 3-channel inputs)


@dataclass(frozen=True)
class ViewParams:
    """Everything random about one view; the geometry is in pixels of the source image and of the crop."""

    top: int  # crop box in the source image
    left: int
    height: int
    width: int
    flip: bool  # horizontal flip of the crop
    angle: float  # degrees, counter-clockwise (torchvision's convention)
    translate: tuple[int, int]  # (tx, ty) in whole pixels of the crop
    scale: float
    brightness: float
    contrast: float
    brightness_first: bool  # ColorJitter applies the two factors in a random order
    sigma: float  # blur sigma in pixels of the crop


def _shape_only(height: int, width: int) -> torch.Tensor:
    """A (1, height, width) tensor without memory: torchvision's parameter draws only read the shape."""
    return torch.empty(1, 1, 1).expand(1, height, width)


class ViewSampler:
    """Draws :class:`ViewParams` exactly as the modules of :func:`paper_augmentation` draw theirs."""

    def __init__(self, params: AugmentationParams) -> None:
        crop, flip, affine, jitter, blur, _resize, _to_input = paper_augmentation(params).transforms
        self.crop_area, self.crop_ratio = list(crop.area), list(crop.ratio)
        self.hflip_p = flip.p
        self.affine, self.jitter = affine, jitter
        self.sigma = blur.sigma

    def __call__(self, height: int, width: int) -> ViewParams:
        top, left, crop_h, crop_w = _RRC.get_params(_shape_only(height, width), self.crop_area, self.crop_ratio)
        flip = bool(torch.rand(1) < self.hflip_p)  # RandomHorizontalFlip's draw: no flip when rand >= p
        affine = self.affine.make_params([_shape_only(crop_h, crop_w)])
        jitter = self.jitter.make_params([])
        order = jitter["fn_idx"].tolist()
        sigma = float(torch.empty(1).uniform_(self.sigma[0], self.sigma[1]).item())
        return ViewParams(
            top=top,
            left=left,
            height=crop_h,
            width=crop_w,
            flip=flip,
            angle=float(affine["angle"]),
            translate=(int(affine["translate"][0]), int(affine["translate"][1])),
            scale=float(affine["scale"]),
            brightness=float(jitter["brightness_factor"]),
            contrast=float(jitter["contrast_factor"]),
            brightness_first=order.index(0) < order.index(1),
            sigma=sigma,
        )


def crop_to_output_matrix(view: ViewParams, output_size: int) -> list[float]:
    """The 2x3 matrix ``[a, b, c, d, e, f]`` mapping a continuous output position (x, y) (pixel centres at
    i + 0.5) to the crop position ``(a x + b y + c, d x + e y + f)`` the reference's flip -> affine -> resize
    takes that output pixel from."""
    w, h = view.width, view.height
    # resize: output -> affine output (the crop's size); then torchvision's inverse affine about the centre.
    rx, ry = w / output_size, h / output_size
    rot = math.radians(view.angle)
    cos, sin = math.cos(rot) / view.scale, math.sin(rot) / view.scale
    tx, ty = view.translate
    # centred q = (rx x - w/2 - tx, ry y - h/2 - ty); p = [[cos, sin], [-sin, cos]] q + (w/2, h/2)
    a, b = cos * rx, sin * ry
    d, e = -sin * rx, cos * ry
    c = -cos * (w / 2 + tx) - sin * (h / 2 + ty) + w / 2
    f = sin * (w / 2 + tx) - cos * (h / 2 + ty) + h / 2
    if view.flip:  # the flip came before the affine: x_crop = w - x_flipped
        a, b, c = -a, -b, w - c
    return [a, b, c, d, e, f]


def _sampling_grid(matrix: list[float], crop_w: int, crop_h: int, size: int) -> torch.Tensor:
    """grid_sample's (1, size, size, 2) grid for ``matrix`` (output -> crop pixels), in grid_sample's normalised
    coordinates (align_corners=False: -1 and 1 are the crop's outer edges, at any resolution of the crop)."""
    a, b, c, d, e, f = matrix
    centres = torch.arange(size, dtype=torch.float32).add_(0.5)
    sx, sy = 2.0 / crop_w, 2.0 / crop_h
    grid = torch.empty(1, size, size, 2)
    torch.add((centres * (a * sx)).unsqueeze(0), (centres * (b * sx) + (c * sx - 1)).unsqueeze(1), out=grid[0, ..., 0])
    torch.add((centres * (d * sy)).unsqueeze(0), (centres * (e * sy) + (f * sy - 1)).unsqueeze(1), out=grid[0, ..., 1])
    return grid


def _fill_mask(grid: torch.Tensor, crop_w: int, crop_h: int) -> torch.Tensor:
    """torchvision's affine with ``fill=0`` multiplies the sample by the bilinear sample of an all-ones image of
    the crop's size (zeros outside): separable, ``clamp(min(p, side - p) + 0.5, 0, 1)`` along each axis at the
    crop position p (pixel centres at i + 0.5): 1 inside, a linear ramp over the pixel at the border. With
    ``g = 2 p / side - 1`` (the grid), ``min(p, side - p) = (1 - |g|) side / 2``."""
    half = torch.tensor([crop_w / 2, crop_h / 2])
    weights = grid.abs().mul_(-half).add_(half + 0.5).clamp_(0, 1)
    return weights[..., 0] * weights[..., 1]


def _blur_matrix(size: int, sigma: float, half: int) -> torch.Tensor:
    """(size, size) matrix of a 1-D Gaussian blur with ``2 half + 1`` taps and reflect padding (as the reference's
    :func:`~convirt.data.transforms.gaussian_blur`: the taps cut to ``size - 1`` each side)."""
    half = min(half, size - 1)
    weights = gaussian_weights(half, sigma)
    # The banded (Toeplitz) matrix over the padded signal: rows of length L + 1 holding the taps, read with
    # length L, shift by one column per row.
    padded = size + 2 * half
    band = torch.zeros(size, padded + 1)
    band[:, : 2 * half + 1] = weights
    band = band.view(-1)[: size * padded].view(size, padded)
    matrix = band[:, half : half + size].clone()
    if half:  # reflect padding: padded column p < half is pixel half - p; past the end, mirrored likewise
        matrix[:, 1 : half + 1] += band[:, :half].flip(1)
        matrix[:, size - 1 - half : size - 1] += band[:, size + half :].flip(1)
    return matrix


def _grey_mean(image: torch.Tensor) -> torch.Tensor:
    if image.shape[0] == 3:
        return (image[0] * _LUMA[0] + image[1] * _LUMA[1] + image[2] * _LUMA[2]).floor_().mean()
    return image.mean()


def render_view(image: torch.Tensor, view: ViewParams, output_size: int, blur_kernel_size: int) -> torch.Tensor:
    """Render ``view`` of a uint8 (1 or 3, H, W) image as a float (C, size, size) image in [0, 255] (before
    normalisation)."""
    crop = image[:, view.top : view.top + view.height, view.left : view.left + view.width].float().unsqueeze(0)
    resized = max(view.width, view.height) > MAX_WARP_DOWNSCALE * output_size
    if resized:
        crop = F.interpolate(crop, size=(output_size, output_size), mode="bilinear", antialias=True)
    grid = _sampling_grid(crop_to_output_matrix(view, output_size), view.width, view.height, output_size)
    x = F.grid_sample(crop, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    if not resized:  # a resized crop's zero padding already ramps over one output pixel, as the reference's resize
        x = x.mul_(_fill_mask(grid[0], view.width, view.height))
    x = x.round_()

    def brightness(x: torch.Tensor) -> torch.Tensor:
        return x.mul_(view.brightness).clamp_(0, 255).floor_()

    def contrast(x: torch.Tensor) -> torch.Tensor:
        mean = _grey_mean(x)
        return x.mul_(view.contrast).add_((1.0 - view.contrast) * mean).clamp_(0, 255).floor_()

    for adjust in (brightness, contrast) if view.brightness_first else (contrast, brightness):
        x = adjust(x)
    half = blur_kernel_size // 2
    along_x, along_y = output_size / view.width, output_size / view.height
    blur_x = _blur_matrix(output_size, view.sigma * along_x, max(1, round(half * along_x)))
    blur_y = _blur_matrix(output_size, view.sigma * along_y, max(1, round(half * along_y)))
    return blur_y @ x @ blur_x.T


class FusedAugmentation(torch.nn.Module):
    """The paper's augmentation family as :func:`paper_augmentation` (same input and output: uint8 (1 or 3, H, W)
    in, ImageNet-normalised float (3, size, size) out; randomness from torch's global generator, the same
    parameters for the same seed), rendered in one warp (see the module docstring)."""

    def __init__(self, params: AugmentationParams | None = None) -> None:
        super().__init__()
        self.params = params or AugmentationParams()
        self.sampler = ViewSampler(self.params)
        self.to_input = ToModelInput()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        view = self.sampler(image.shape[-2], image.shape[-1])
        return self.to_input(render_view(image, view, self.params.output_size, self.params.blur_kernel_size))

    def extra_repr(self) -> str:
        return f"{self.params}"


def image_transforms(config: Config, train: bool = True) -> torch.nn.Module:
    """The paper's augmentation family for training, rendered as ``data.augment.pipeline`` says (``fused``:
    :class:`FusedAugmentation`; ``torchvision``: :func:`paper_augmentation`), a plain resize for validation and
    embedding."""
    params = AugmentationParams.from_config(config.data.augment)
    if not train:
        return resize_transform(params.output_size)
    if config.data.augment.pipeline == "fused":
        return FusedAugmentation(params)
    return paper_augmentation(params)
