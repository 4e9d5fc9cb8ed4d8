"""Configs: the paper YAML matches the paper, overrides work, mistakes are named."""

from __future__ import annotations

from pathlib import Path

import pytest

from convirt.config import Config, load_config
from convirt.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_paper_config_has_the_papers_numbers() -> None:
    c = load_config(ROOT / "configs" / "paper.yaml")
    assert (c.model.image_encoder, c.model.image_weights) == ("resnet50", "imagenet")
    assert c.model.text_encoder == "emilyalsentzer/Bio_ClinicalBERT" and c.model.freeze_layers == 6
    assert (c.model.pooling, c.model.projection_dim, c.model.head) == ("max", 512, "mlp")
    assert (c.loss.temperature, c.loss.lambda_) == (0.1, 0.75)
    assert c.data.batch_size == 32
    a = c.data.augment
    assert a.crop_area == [0.6, 1.0] and a.hflip_p == 0.5 and a.rotation_degrees == 20 and a.translate == 0.1
    assert a.affine_scale == [0.95, 1.05] and a.brightness == a.contrast == [0.6, 1.4]
    assert a.blur_sigma == [0.1, 3.0] and a.output_size == 224
    assert (c.optim.lr, c.optim.weight_decay) == (1e-4, 1e-6)
    assert (c.train.val_every_steps, c.train.plateau_patience, c.train.lr_factor) == (5000, 5, 0.5)
    assert c.train.max_evals == 200 and c.max_steps == 1_000_000
    assert c.train.precision == "mixed"
    assert c.train.sync_batchnorm is True and Config().train.sync_batchnorm is False  # several GPUs: as one GPU


def test_defaults_equal_the_paper_config_where_it_matters() -> None:
    paper, default = load_config(ROOT / "configs" / "paper.yaml"), Config()
    assert paper.loss == default.loss and paper.optim == default.optim
    assert paper.data.augment.crop_area == default.data.augment.crop_area


def test_overrides_are_typed() -> None:
    c = load_config(
        None,
        [
            "train.seed=5",
            "optim.lr=3e-4",
            "model.head_hidden_dim=null",
            "train.devices=[0,1]",
            "data.augment.crop_area=[0.5, 1.0]",
            "data.check_images=false",
        ],
    )
    assert c.train.seed == 5 and c.optim.lr == 3e-4 and c.model.head_hidden_dim is None
    assert c.train.devices == [0, 1] and c.data.augment.crop_area == [0.5, 1.0] and c.data.check_images is False


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.sed=1", r"unknown config key\(s\) \['sed'\] in section 'train'"),
        ("optim.lr=fast", "optim.lr must be a number"),
        ("data.batch_size=1", "at least 2"),
        ("train.precision=fp8", "train.precision"),
        ("model.pooling=attention", "model.pooling"),
        ("loss.lambda_=2", r"loss.lambda_ must be in \[0, 1\]"),
        ("train.keep_checkpoints=all", "train.keep_checkpoints 'all': use one of best_last, every_eval"),
        ("trainseed", "must look like section.key=value"),
    ],
)
def test_mistakes_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)  # unknown keys or wrongly typed values would raise ConfigError naming them
    assert config.max_steps > 0 and config.data.batch_size > 0
