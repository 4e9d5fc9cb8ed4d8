"""Saliency maps on radiographs: Grad-CAM for a classifier built on an image encoder, and text-query saliency.

Both are Grad-CAM (Selvaraju et al., 2017) on the image encoder's last convolutional feature map A (C, h, w)
(``layer4`` of ResNets, ``features`` of MobileNet/DenseNet/EfficientNet-style torchvision models):

    weights_c = mean over (i, j) of d score / d A[c, i, j];   map = ReLU(sum_c weights_c * A[c]),

upsampled bilinearly to the input size and scaled to [0, 1] per image (a map that is zero everywhere stays zero).

- **Classifier**: ``score`` = the logit of the target class (default: the predicted class) of ``head(h_v)``, where
  ``head`` is any module on the encoder features (a linear probe, a fine-tuned classifier's last layer, or the
  zero-shot classifier of :func:`zero_shot_head`).
- **Text query**: ``score`` = cosine similarity between the projected image embedding ``v = g_v(h_v)`` and the
  sentence's text embedding ``u``: the map shows which image regions raise the similarity to the sentence.

Maps are computed in float32 (no autocast) with gradients only with respect to the feature map. Overlays are
drawn on the radiograph at its own size and aspect (the model input is a plain resize of it, so the map is
stretched back the same way).
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from convirt.errors import ConfigError
from convirt.fileio import atomic_write_bytes
from convirt.models.image import ImageEncoder


def target_layer(image_encoder: ImageEncoder) -> nn.Module:
    """The module whose output is :meth:`ImageEncoder.feature_maps` (the last conv feature map)."""
    body = image_encoder.backbone
    if hasattr(body, "layer4"):
        return body.layer4
    if hasattr(body, "features"):
        return body.features
    raise ConfigError(f"saliency maps are not available for image encoder {image_encoder.name!r}")


def grad_cam(
    image_encoder: ImageEncoder,
    images: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N, H, W) in [0, 1] for ``score_fn(h_v) -> (N,)`` on preprocessed ``images`` (N, 3, H, W).

    Returns the maps and the scores.
    """
    layer = target_layer(image_encoder)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        return output.clone()  # later in-place ops (e.g. DenseNet's relu_) must not touch the captured map

    device = next(image_encoder.parameters()).device
    was_training = image_encoder.training
    image_encoder.eval()
    handle = layer.register_forward_hook(hook)
    try:
        with torch.enable_grad(), torch.autocast(device.type, enabled=False):
            x = images.to(device=device, dtype=torch.float32).contiguous()
            features = image_encoder(x).float()
            scores = score_fn(features)
            if scores.shape != (len(x),):
                raise ValueError(f"score_fn must return one score per image, got shape {tuple(scores.shape)}")
            (gradients,) = torch.autograd.grad(scores.sum(), captured[0])
    finally:
        handle.remove()
        image_encoder.train(was_training)
    activations = captured[0].detach().float()
    weights = gradients.float().mean(dim=(2, 3), keepdim=True)
    cams = F.relu((weights * activations).sum(dim=1, keepdim=True))
    cams = F.interpolate(cams, size=tuple(images.shape[-2:]), mode="bilinear", align_corners=False)[:, 0]
    peak = cams.flatten(1).max(dim=1).values.clamp(min=1e-12)[:, None, None]
    return (cams / peak).cpu(), scores.detach().cpu()


def classifier_grad_cam(
    image_encoder: ImageEncoder,
    head: nn.Module,
    images: torch.Tensor,
    targets: int | Sequence[int] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Grad-CAM of ``head(image_encoder(x))`` for class ``targets`` (default: each image's predicted class).

    Returns (maps (N, H, W), target classes (N,), logits (N, C)).
    """
    head = head.to(next(image_encoder.parameters()).device).float().eval()
    with torch.no_grad():
        logits = head(image_encoder(images.to(next(image_encoder.parameters()).device).float()).float()).cpu()
    if logits.ndim == 1:
        logits = logits[:, None]
    if targets is None:
        chosen = logits.argmax(dim=1) if logits.shape[1] > 1 else torch.zeros(len(logits), dtype=torch.long)
    else:
        chosen = torch.as_tensor(targets, dtype=torch.long).expand(len(images)).clone()
    index = chosen.to(next(image_encoder.parameters()).device)

    def score(features: torch.Tensor) -> torch.Tensor:
        out = head(features)
        out = out[:, None] if out.ndim == 1 else out
        return out.gather(1, index[:, None])[:, 0]

    cams, _ = grad_cam(image_encoder, images, score)
    return cams, chosen, logits


def text_grad_cam(model, images: torch.Tensor, text_embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-query saliency: Grad-CAM of cos(g_v(h_v), u) for a ConVIRT ``model`` and one text embedding ``u``.

    Returns (maps (N, H, W), cosine similarities (N,)).
    """
    device = next(model.image_encoder.parameters()).device
    u = F.normalize(text_embedding.detach().clone().float().reshape(-1), dim=0).to(device)
    head = model.image_head

    def score(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(head(features).float(), dim=-1) @ u

    return grad_cam(model.image_encoder, images, score)


def zero_shot_head(class_embeddings: torch.Tensor, image_head: nn.Module, temperature: float = 0.1) -> nn.Module:
    """The zero-shot classifier as a head on ``h_v``: logits = cos(g_v(h_v), class embedding) / temperature."""

    class ZeroShotHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image_head = image_head
            self.register_buffer("classes", F.normalize(class_embeddings.detach().clone().float(), dim=-1))

        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return F.normalize(self.image_head(features).float(), dim=-1) @ self.classes.T / temperature

    return ZeroShotHead()


# ---------------------------------------------------------------------------------------------------------------
# Overlays and grids


def overlay(image: Image.Image, cam: torch.Tensor | np.ndarray, alpha: float = 0.45, colormap: str = "jet"):
    """The radiograph (any size) with the map (any size, values in [0, 1]) resized onto it, as an RGB image."""
    import matplotlib

    base = np.asarray(image.convert("L").convert("RGB"), dtype=np.float32) / 255.0
    heat = torch.as_tensor(np.asarray(cam, dtype=np.float32))[None, None]
    heat = F.interpolate(heat, size=base.shape[:2], mode="bilinear", align_corners=False)[0, 0].clamp(0, 1).numpy()
    colours = matplotlib.colormaps[colormap](heat)[..., :3]
    blended = (1 - alpha * heat[..., None]) * base + alpha * heat[..., None] * colours
    return Image.fromarray(np.clip(blended * 255 + 0.5, 0, 255).astype(np.uint8), mode="RGB")


@dataclass
class SaliencyItem:
    image: Image.Image  # the radiograph as loaded
    cam: torch.Tensor  # (h, w) in [0, 1]
    title: str


def saliency_grid(
    items: Sequence[SaliencyItem],
    output: str | os.PathLike,
    title: str | None = None,
    columns: int = 4,
    alpha: float = 0.45,
    dpi: int = 120,
) -> Path:
    """A PNG grid: for each item, the radiograph and its overlay side by side, titled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not items:
        raise ConfigError("no images to draw saliency maps for")
    columns = max(1, min(columns, len(items)))
    rows = (len(items) + columns - 1) // columns
    figure, axes = plt.subplots(rows, 2 * columns, figsize=(2.6 * 2 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for i, item in enumerate(items):
        row, col = divmod(i, columns)
        axes[row][2 * col].imshow(item.image.convert("L"), cmap="gray")
        axes[row][2 * col + 1].imshow(overlay(item.image, item.cam, alpha))
        axes[row][2 * col].set_title(item.title, fontsize=8, loc="left")
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(output, buffer.getvalue())
    return Path(output)
