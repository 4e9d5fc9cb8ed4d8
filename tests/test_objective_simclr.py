"""SimCLR objective: NT-Xent on a hand-checked case, gradients, learning on real X-rays, config checks."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from convirt.errors import ConfigError
from convirt.objectives import build_objective
from convirt.objectives.simclr import nt_xent_loss
from objective_fixtures import fixed_batch_training, image_encoder_gradients, real_batch, small_manifest


def test_nt_xent_hand_checked() -> None:
    # Two images, views identical, orthogonal: each anchor sees its positive at cos 1 and two negatives at cos 0.
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent_loss(z, z.clone(), 1.0).item() == pytest.approx(math.log(1 + 2 / math.e), abs=1e-6)
    # Temperature 0.5 doubles the logits; lengths do not matter (cosine similarity).
    assert nt_xent_loss(3 * z, z, 0.5).item() == pytest.approx(math.log(1 + 2 * math.exp(-2)), abs=1e-6)
    # Anchor 0 = [1, 0]: positive [0.6, 0.8] (cos .6); negatives [0, 1] (0) and [0, 1] (0) -> per-anchor terms.
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    terms = [
        -0.6 + math.log(math.exp(0.0) + math.exp(0.6) + math.exp(0.0)),  # z1[0]: z1[1], z2[0]+, z2[1]
        -1.0 + math.log(math.exp(0.0) + math.exp(0.8) + math.exp(1.0)),  # z1[1]: z1[0], z2[0], z2[1]+
        -0.6 + math.log(math.exp(0.6) + math.exp(0.8) + math.exp(0.8)),  # z2[0]: z1[0]+, z1[1], z2[1]
        -1.0 + math.log(math.exp(0.0) + math.exp(1.0) + math.exp(0.8)),  # z2[1]: z1[0], z1[1]+, z2[0]
    ]
    assert nt_xent_loss(z1, z2, 1.0).item() == pytest.approx(sum(terms) / 4, abs=1e-6)


@pytest.fixture(scope="module")
def simclr_parts(tmp_path_factory, covid_prepared: Path, tiny_bert_dir: Path):
    folder = tmp_path_factory.mktemp("simclr")
    manifest = small_manifest(covid_prepared, folder)
    config = tiny_config(manifest, folder / "run", tiny_bert_dir, objective="simclr")
    torch.manual_seed(0)
    return build_objective(config)


def test_views_are_two_different_augmentations(simclr_parts) -> None:
    batch = real_batch(simclr_parts.data, 4)
    assert batch["images"].shape == (4, 2, 3, 64, 64)
    assert not torch.equal(batch["images"][:, 0], batch["images"][:, 1])
    again = real_batch(simclr_parts.data, 4)
    torch.testing.assert_close(batch["images"], again["images"])  # seeded per draw


def test_gradients_reach_the_image_encoder(simclr_parts) -> None:
    total, reached = image_encoder_gradients(simclr_parts.module, real_batch(simclr_parts.data, 4))
    assert reached == total > 0


def test_a_few_steps_lower_the_loss_on_real_images(simclr_parts) -> None:
    before, after = fixed_batch_training(simclr_parts.module, real_batch(simclr_parts.data, 6), steps=4)
    assert after < before - 0.1, (before, after)


def test_simclr_settings_and_errors(simclr_parts, tiny_bert_dir: Path) -> None:
    module = simclr_parts.module
    assert module.temperature == 0.1 and module.model.head.out_dim == 128 and module.plateau is None
    assert simclr_parts.payload["objective_params"] == {"temperature": 0.1, "out_dim": 128, "lr_schedule": "constant"}
    manifest = simclr_parts.data.config.data.manifest
    with pytest.raises(ConfigError, match=r"objective_params\.temperature"):
        build_objective(
            tiny_config(manifest, "/tmp/x", tiny_bert_dir, objective="simclr", objective_params="{temperature: 0}")
        )
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['queue_size'\]"):
        build_objective(
            tiny_config(manifest, "/tmp/x", tiny_bert_dir, objective="simclr", objective_params="{queue_size: 3}")
        )
