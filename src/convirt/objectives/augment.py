"""The image-only baselines' augmentations (Appendix E): each method's default family, with saturation and hue
jitter set to 0 because radiographs are monochrome.

Inputs are one-channel uint8 tensors as :class:`~convirt.data.paired.PairedDataset` loads them; outputs are
ImageNet-normalised (3, size, size) floats like the ConVIRT views (:class:`~convirt.data.transforms.ToModelInput`).
``RandomGrayscale(p=0.2)``, part of both defaults, is omitted: on a monochrome image it is the identity.

- SimCLR (sthalles/SimCLR defaults): RandomResizedCrop(size) (area 0.08-1), horizontal flip, colour jitter with
  p=0.8 (brightness 0.8, contrast 0.8; saturation 0, hue 0), Gaussian blur always with sigma in [0.1, 2.0] and a
  kernel of about 10% of the image side.
- MoCo v2 (facebookresearch/moco ``--aug-plus``): RandomResizedCrop(size, area 0.2-1), colour jitter with p=0.8
  (brightness 0.4, contrast 0.4; saturation 0, hue 0), Gaussian blur with p=0.5 and sigma in [0.1, 2.0],
  horizontal flip.
"""

from __future__ import annotations

from torchvision.transforms import v2

from convirt.data.transforms import RandomGaussianBlur, ToModelInput


def blur_kernel(size: int) -> int:
    """An odd kernel of about 10% of the image side (SimCLR's choice), at least 3."""
    return max(3, 2 * (int(0.1 * size) // 2) + 1)


def simclr_augmentation(size: int = 224, jitter_strength: float = 1.0) -> v2.Compose:
    s = jitter_strength
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomApply([v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s, saturation=0.0, hue=0.0)], p=0.8),
            RandomGaussianBlur(blur_kernel(size), (0.1, 2.0)),
            ToModelInput(),
        ]
    )


def moco_v2_augmentation(size: int = 224) -> v2.Compose:
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
            v2.RandomApply([v2.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0)], p=0.8),
            v2.RandomApply([RandomGaussianBlur(blur_kernel(size), (0.1, 2.0))], p=0.5),
            v2.RandomHorizontalFlip(),
            ToModelInput(),
        ]
    )
