"""Saliency: Grad-CAM for a classifier on an encoder and text-query saliency, checked against the closed form."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from convirt.analysis.saliency import (
    FINER,
    SaliencyItem,
    classifier_grad_cam,
    finer_layer,
    overlay,
    saliency_grid,
    text_grad_cam,
    zero_shot_head,
)
from convirt.cli import main
from convirt.errors import ConfigError
from convirt.models.image import create_image_encoder
from test_retrieval_support import copy_kermany, write_tiny_checkpoint


def _expected_map(activations: torch.Tensor, channel_weights: torch.Tensor, size: int) -> torch.Tensor:
    """Grad-CAM by hand: ReLU(sum_c w_c A_c), upsampled and scaled to max 1 (the 1/(h*w) of the mean cancels)."""
    cam = F.relu((channel_weights[:, :, None, None] * activations).sum(1, keepdim=True))
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).max(1).values.clamp(min=1e-12)[:, None, None]


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_classifier_grad_cam_of_a_linear_head_is_the_weighted_feature_map(name):
    torch.manual_seed(0)
    encoder = create_image_encoder(name, None).eval()
    head = torch.nn.Linear(encoder.feature_dim, 3)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        activations = encoder.feature_maps(images)
        logits = head(encoder(images))
    # d logit_t / d A[c, i, j] = W[t, c] / (h * w): the channel weights are the head's row for the target.
    cams, targets, got_logits = classifier_grad_cam(encoder, head, images, targets=[2, 0])
    torch.testing.assert_close(cams, _expected_map(activations, head.weight[[2, 0]].detach(), 64), atol=1e-5, rtol=1e-4)
    assert targets.tolist() == [2, 0]
    torch.testing.assert_close(got_logits, logits, atol=1e-5, rtol=1e-4)
    cams, targets, _ = classifier_grad_cam(encoder, head, images)  # default: the predicted class
    assert targets.tolist() == logits.argmax(1).tolist()
    assert cams.shape == (2, 64, 64) and float(cams.min()) >= 0 and float(cams.amax(dim=(1, 2)).min()) <= 1


def test_text_saliency_matches_the_gradient_of_the_cosine_by_hand():
    torch.manual_seed(1)
    encoder = create_image_encoder("resnet18", None).eval()
    projection = torch.nn.Linear(encoder.feature_dim, 16)  # a linear g_v keeps the derivative in closed form
    model = SimpleNamespace(image_encoder=encoder, image_head=projection)
    u = F.normalize(torch.randn(16), dim=0)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        activations = encoder.feature_maps(images)
        v = projection(encoder(images))
    norm = v.norm(dim=1, keepdim=True)
    cosine = (v @ u) / norm[:, 0]
    # s = <v, u> / |v|  ->  ds/dv = u / |v| - s v / |v|^2 ;  ds/dh = W^T ds/dv
    ds_dv = u[None] / norm - cosine[:, None] * v / norm**2
    channel_weights = ds_dv @ projection.weight.detach()
    cams, similarities = text_grad_cam(model, images, u * 3.0)  # any scale of u: it is normalised
    torch.testing.assert_close(similarities, cosine, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(cams, _expected_map(activations, channel_weights, 64), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(("name", "expected"), [("resnet18", "layer3"), ("mobilenet_v2", "features.13")])
def test_finer_layer_is_the_stride_16_block(name, expected):
    encoder = create_image_encoder(name, None)
    assert finer_layer(encoder, 64) == expected and finer_layer(encoder, 224) == expected
    with pytest.raises(ConfigError, match=r"no module 'layer9'.*top-level blocks"):
        classifier_grad_cam(encoder, torch.nn.Linear(encoder.feature_dim, 2), torch.randn(1, 3, 64, 64), layer="layer9")


def test_grad_cam_on_the_finer_block_equals_the_map_computed_by_hand():
    """ResNet18 split by hand at layer3 (no hooks): A = layer3(stem(x)), score = head(pool(layer4(A)))[target]."""
    torch.manual_seed(2)
    encoder = create_image_encoder("resnet18", None).eval()
    head = torch.nn.Linear(encoder.feature_dim, 3)
    images = torch.randn(2, 3, 64, 64)
    body = encoder.backbone
    stem = torch.nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool, body.layer1, body.layer2, body.layer3)
    activations = stem(images).detach().requires_grad_(True)
    scores = head(torch.flatten(body.avgpool(body.layer4(activations)), 1))[[0, 1], [1, 2]]
    (gradients,) = torch.autograd.grad(scores.sum(), activations)
    assert activations.shape[-1] == 4  # twice the 2 x 2 of the last map at 64 px
    expected = _expected_map(activations.detach(), gradients.mean(dim=(2, 3)), 64)
    cams, _, _ = classifier_grad_cam(encoder, head, images, targets=[1, 2], layer=FINER)
    torch.testing.assert_close(cams, expected, atol=1e-5, rtol=1e-4)
    last, _, _ = classifier_grad_cam(encoder, head, images, targets=[1, 2])
    assert not torch.allclose(cams, last, atol=1e-3)  # a different (finer) map than the default


def test_zero_shot_head_logits_and_overlay_and_grid(tmp_path: Path):
    classes = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=1)
    head = zero_shot_head(classes, torch.nn.Identity(), temperature=0.5)
    torch.testing.assert_close(head(torch.tensor([[3.0, 4.0]])), torch.tensor([[0.6 / 0.5, 0.8 / 0.5]]))
    image = Image.fromarray(np.full((30, 20), 100, dtype=np.uint8), mode="L")
    assert np.array_equal(np.asarray(overlay(image, torch.zeros(4, 4))), np.full((30, 20, 3), 100))  # no heat
    hot = np.asarray(overlay(image, torch.ones(4, 4), alpha=1.0))
    assert hot.shape == (30, 20, 3) and not np.array_equal(hot[..., 0], hot[..., 2])  # coloured
    output = saliency_grid(
        [SaliencyItem(image, torch.rand(8, 8), "a"), SaliencyItem(image, torch.rand(8, 8), "b")],
        tmp_path / "grid.png",
        columns=2,
    )
    with Image.open(output) as grid:
        assert grid.format == "PNG" and grid.size[0] > grid.size[1]


def test_saliency_command_for_a_text_query_and_the_zero_shot_classifier(shared_data, tiny_bert_dir, tmp_path):
    copy_kermany(shared_data, tmp_path / "kermany", per_class=1, split="train")
    images = copy_kermany(shared_data, tmp_path / "kermany", per_class=2, split="test")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    assert (
        main(
            [
                "plot",
                "saliency",
                "--encoder",
                str(checkpoint),
                "--text",
                "Pneumonia is present.",
                "--layer",
                "finer",
                str(images[0]),
                str(images[-1]),
                "-o",
                str(tmp_path / "text.png"),
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "plot",
                "saliency",
                "--encoder",
                str(checkpoint),
                "--dataset",
                str(tmp_path / "kermany"),
                "--per-class",
                "1",
                "--prompts",
                "builtin:kermany",
                "-o",
                str(tmp_path / "zs.png"),
            ]
        )
        == 0
    )
    probe = torch.nn.Linear(512, 2)
    torch.save(probe.state_dict(), tmp_path / "probe.pt")
    assert (
        main(
            [
                "plot",
                "saliency",
                "--encoder",
                "random:resnet18",
                "--head",
                str(tmp_path / "probe.pt"),
                "--class-names",
                "NORMAL",
                "PNEUMONIA",
                "--target",
                "PNEUMONIA",
                str(images[0]),
                "-o",
                str(tmp_path / "probe.png"),
            ]
        )
        == 0
    )
    for name in ("text.png", "zs.png", "probe.png"):
        with Image.open(tmp_path / name) as figure:
            assert figure.format == "PNG"
    assert (
        main(
            [
                "plot",
                "saliency",
                "--encoder",
                "random:resnet18",
                "--text",
                "x",
                str(images[0]),
                "-o",
                str(tmp_path / "no.png"),
            ]
        )
        == 2
    )  # an image-only encoder has no text tower
