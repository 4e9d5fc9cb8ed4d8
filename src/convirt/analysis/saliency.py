"""Saliency maps on radiographs: Grad-CAM for a classifier built on an image encoder, and text-query saliency.

Both are Grad-CAM (Selvaraju et al., 2017) on the image encoder's last convolutional feature map A (C, h, w)
(``layer4`` of ResNets, ``features`` of MobileNet/DenseNet/EfficientNet-style torchvision models), or on an
earlier block chosen by name (``layer="finer"``: the block at twice that resolution, for small inputs):

    weights_c = mean over (i, j) of d score / d A[c, i, j];   map = ReLU(sum_c weights_c * A[c]),

upsampled bilinearly to the input size and scaled to [0, 1] per image (a map that is zero everywhere stays zero).

- **Classifier**: ``score`` = the logit of the target class (default: the predicted class) of ``head(h_v)``, where
  ``head`` is any module on the encoder features (a linear probe, a fine-tuned classifier's last layer, or the
  zero-shot classifier of :func:`zero_shot_head`).
- **Text query**: ``score`` = cosine similarity between the projected image embedding ``v = g_v(h_v)`` and the
  sentence's text embedding ``u``: the map shows which image regions raise the similarity to the sentence.

:func:`text_saliency` and :func:`classifier_saliency` run either on image files with an embedder and return
captioned :class:`SaliencyItem` s for :func:`saliency_grid` (``convirt plot saliency`` and the demo use them).

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

from convirt.encoders.embedders import Embedder
from convirt.encoders.prompts import class_embeddings
from convirt.errors import ConfigError
from convirt.fileio import atomic_write_bytes, load_torch_file
from convirt.models.image import ImageEncoder

FINER = "finer"  # the ``layer`` value that picks the block with twice the last map's resolution


def finer_layer(image_encoder: ImageEncoder, image_size: int) -> str:
    """The dotted name of the last backbone block whose map has at least twice the last map's resolution.

    For a ResNet that is ``layer3``, for a MobileNetV2 ``features.13``, for a DenseNet ``features.denseblock3``:
    stride 16 instead of 32. Found by running one blank ``image_size`` image and reading each block's output width.
    """
    body = image_encoder.backbone
    prefix, parent = ("", body) if hasattr(body, "layer4") else ("features.", getattr(body, "features", None))
    if parent is None:
        raise ConfigError(f"saliency maps are not available for image encoder {image_encoder.name!r}")
    widths: dict[str, int] = {}

    def record(name: str):
        def hook(_module, _inputs, output):
            if isinstance(output, torch.Tensor) and output.ndim == 4:
                widths[name] = output.shape[-1]

        return hook

    handles = [module.register_forward_hook(record(name)) for name, module in parent.named_children()]
    device = next(image_encoder.parameters()).device
    was_training = image_encoder.training
    image_encoder.eval()
    try:
        with torch.no_grad():
            last = image_encoder.feature_maps(torch.zeros(1, 3, image_size, image_size, device=device)).shape[-1]
    finally:
        for handle in handles:
            handle.remove()
        image_encoder.train(was_training)
    finer = [name for name, width in widths.items() if width >= 2 * last]
    if not finer:
        raise ConfigError(f"image encoder {image_encoder.name!r} has no block finer than its last map")
    return prefix + finer[-1]


def target_layer(image_encoder: ImageEncoder, name: str | None = None) -> nn.Module:
    """The module whose feature map Grad-CAM explains.

    By default the last conv feature map (the output :meth:`ImageEncoder.feature_maps` gives). ``name`` picks an
    earlier block of the backbone by its dotted module name, e.g. ``layer3`` of a ResNet or ``features.13`` of a
    MobileNetV2 (:func:`finer_layer` finds it): its map has twice the resolution (stride 16 instead of 32), which
    matters for small inputs, where the last map is a few cells wide (2x2 for 64 px).
    """
    body = image_encoder.backbone
    if name:
        try:
            return body.get_submodule(name)
        except AttributeError:
            blocks = [n for n, _ in body.named_children()]
            raise ConfigError(
                f"image encoder {image_encoder.name!r} has no module {name!r} for saliency; its top-level "
                f"blocks are {blocks} (give a dotted name inside them, e.g. 'features.13', or {FINER!r})"
            ) from None
    if hasattr(body, "layer4"):
        return body.layer4
    if hasattr(body, "features"):
        return body.features
    raise ConfigError(f"saliency maps are not available for image encoder {image_encoder.name!r}")


def grad_cam(
    image_encoder: ImageEncoder,
    images: torch.Tensor,
    score_fn: Callable[[torch.Tensor], torch.Tensor],
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM maps (N, H, W) in [0, 1] for ``score_fn(h_v) -> (N,)`` on preprocessed ``images`` (N, 3, H, W).

    ``layer``: the backbone module to explain (see :func:`target_layer`; default the last feature map; ``"finer"``:
    :func:`finer_layer` for this input size). Returns the maps and the scores.
    """
    if layer == FINER:
        layer = finer_layer(image_encoder, images.shape[-1])
    module = target_layer(image_encoder, layer)
    captured: list[torch.Tensor] = []

    def hook(_module, _inputs, output):
        captured.append(output)
        return output.clone()  # later in-place ops (e.g. DenseNet's relu_) must not touch the captured map

    device = next(image_encoder.parameters()).device
    was_training = image_encoder.training
    image_encoder.eval()
    handle = module.register_forward_hook(hook)
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
    layer: str | None = None,
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

    cams, _ = grad_cam(image_encoder, images, score, layer)
    return cams, chosen, logits


def text_grad_cam(
    model, images: torch.Tensor, text_embedding: torch.Tensor, layer: str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text-query saliency: Grad-CAM of cos(g_v(h_v), u) for a ConVIRT ``model`` and one text embedding ``u``.

    Returns (maps (N, H, W), cosine similarities (N,)).
    """
    device = next(model.image_encoder.parameters()).device
    u = F.normalize(text_embedding.detach().clone().float().reshape(-1), dim=0).to(device)
    head = model.image_head

    def score(features: torch.Tensor) -> torch.Tensor:
        return F.normalize(head(features).float(), dim=-1) @ u

    return grad_cam(model.image_encoder, images, score, layer)


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


def load_linear_head(path: str | os.PathLike) -> nn.Linear:
    """A linear classifier on ``h_v`` from a torch file: ``weight`` (C, D) and optional ``bias`` (C,), also under a
    ``head``, ``state_dict`` or ``classifier`` key (read with ``weights_only=True``)."""
    data = load_torch_file(path, "classifier file")
    for key in ("head", "state_dict", "classifier"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if isinstance(data, dict):
        weights = {k.rsplit(".", 1)[-1]: v for k, v in data.items() if k.endswith(("weight", "bias"))}
        if "weight" in weights and weights["weight"].ndim == 2:
            layer = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0], bias="bias" in weights)
            layer.load_state_dict(weights)
            return layer
    raise ConfigError(f"{path} holds no linear classifier ('weight' (C, D) and optional 'bias')")


def zero_shot_classifier(embedder: Embedder, prompts: dict[str, list[str]]) -> tuple[nn.Module, list[str]]:
    """The zero-shot classifier of a ConVIRT embedder's prompts, as a head on ``h_v``, and its class names."""
    if not embedder.has_text:
        raise ConfigError(f"the zero-shot classifier needs a ConVIRT checkpoint; {embedder.label!r} has no text tower")
    classes, class_emb = class_embeddings(embedder, prompts)
    return zero_shot_head(class_emb, embedder.model.image_head, embedder.temperature), classes  # type: ignore[attr-defined]


def _load_inputs(embedder: Embedder, paths: Sequence[str | os.PathLike]) -> tuple[list[Image.Image], torch.Tensor]:
    """The radiographs as loaded (for the overlays) and the model input batch made from them."""
    from convirt.data.images import load_image

    originals = [load_image(p, mode="L") for p in paths]
    return originals, torch.stack([embedder.preprocess(image) for image in originals])


def text_saliency(
    embedder: Embedder,
    paths: Sequence[str | os.PathLike],
    queries: Sequence[str | torch.Tensor],
    layer: str | None = None,
    paired: bool = False,
    captions: Sequence[str] | None = None,
) -> list[SaliencyItem]:
    """Text-query saliency (Grad-CAM of cos(v, u)) of a ConVIRT embedder, on image files.

    ``queries`` are sentences or text embeddings ``u``. Every query explains every image, or with ``paired`` query
    i explains image i only. Items are titled with the file name, the query (or ``captions[i]`` per query) and
    the cosine similarity.
    """
    if not embedder.has_text:
        raise ConfigError(f"text saliency needs a ConVIRT checkpoint; {embedder.label!r} has no text tower")
    if paired and len(queries) != len(paths):
        raise ValueError("paired text saliency needs one query per image")
    originals, batch = _load_inputs(embedder, paths)
    items: list[SaliencyItem] = []
    for q, query in enumerate(queries):
        u = embedder.embed_texts([query])[0] if isinstance(query, str) else query
        rows = [q] if paired else list(range(len(paths)))
        cams, sims = text_grad_cam(embedder.model, batch[rows], u, layer)  # type: ignore[attr-defined]
        for row, cam, sim in zip(rows, cams, sims):
            if captions is not None:
                title = f"{captions[q]}\ncos {float(sim):.2f}"
            else:
                title = f'{Path(paths[row]).name}\n"{str(query)[:40]}" cos {float(sim):.3f}'
            items.append(SaliencyItem(originals[row], cam, title, float(sim)))
    return items


def classifier_saliency(
    embedder: Embedder,
    paths: Sequence[str | os.PathLike],
    head: nn.Module,
    classes: Sequence[str] | None = None,
    target: str | int | None = None,
    truths: Sequence[str | None] | None = None,
    layer: str | None = None,
) -> list[SaliencyItem]:
    """Grad-CAM of a classifier ``head`` on the embedder's ``h_v`` for class ``target`` (a name of ``classes`` or
    an index; default each image's prediction), on image files; titled with the explained class, its probability
    and the true class when ``truths`` are given."""
    originals, batch = _load_inputs(embedder, paths)
    classes = list(classes) if classes else [str(i) for i in range(getattr(head, "out_features", 0))]
    chosen_target = None
    if target is not None:
        chosen_target = classes.index(target) if target in classes else int(target)
    cams, chosen, logits = classifier_grad_cam(embedder.image_module, head, batch, chosen_target, layer)
    probs = logits.sigmoid() if logits.shape[1] == 1 else logits.softmax(dim=1)
    truths = list(truths) if truths is not None else [None] * len(paths)
    items = []
    for i, (path, image, cam, c, truth) in enumerate(zip(paths, originals, cams, chosen, truths)):
        name = classes[int(c)] if int(c) < len(classes) else str(int(c))
        truth_text = f" (true {truth})" if truth else ""
        caption = f"{Path(path).name}{truth_text}\nexplains: {name} p={float(probs[i, int(c)]):.2f}"
        items.append(SaliencyItem(image, cam, caption))
    return items


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
    score: float = float("nan")  # the explained score: the cosine similarity for a text query


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
    # constrained layout keeps each row's (two-line) titles clear of the images above them
    figure, axes = plt.subplots(
        rows, 2 * columns, figsize=(2.6 * 2 * columns, 3.0 * rows), squeeze=False, layout="constrained"
    )
    for axis in axes.flat:
        axis.axis("off")
    for i, item in enumerate(items):
        row, col = divmod(i, columns)
        axes[row][2 * col].imshow(item.image.convert("L"), cmap="gray")
        axes[row][2 * col + 1].imshow(overlay(item.image, item.cam, alpha))
        axes[row][2 * col].set_title(item.title, fontsize=8, loc="left")
    if title:
        figure.suptitle(title, fontsize=10)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(output, buffer.getvalue())
    return Path(output)
