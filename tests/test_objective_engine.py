"""Every baseline objective through the real engine: a short run on real COVID-19 pairs writes checkpoints whose
image encoder loads, exports and evaluates exactly like ConVIRT's; captioners keep the best checkpoint by CIDEr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import tiny_config
from convirt.api import load_image_encoder
from convirt.encoders.checkpoint import load_checkpoint, load_image_encoder_from_checkpoint, load_model
from convirt.encoders.embedders import load_embedder
from convirt.encoders.export import export_checkpoint
from convirt.engine.train import pretrain
from convirt.errors import CheckpointError, ConfigError
from convirt.evaluation.classification.runner import encoder_choice
from convirt.objectives import build_objective
from objective_fixtures import small_manifest

pytestmark = pytest.mark.slow

PARAMS = {
    "contrastive_binary": "{hidden_dim: 16}",
    "caption_lstm": "{min_count: 2, max_words: 10, embed_dim: 32, hidden_dim: 32, attention_dim: 16}",
    "caption_transformer": "{min_count: 2, max_words: 10, d_model: 32, heads: 2, layers: 1, ffn_dim: 64}",
    "simclr": "{}",
    "moco_v2": "{queue_size: 16}",
}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, covid_prepared: Path) -> Path:
    return small_manifest(covid_prepared, tmp_path_factory.mktemp("objective-engine"), train=8, val=8)


@pytest.mark.parametrize("objective", sorted(PARAMS))
def test_objective_runs_in_the_engine_and_exports(objective: str, manifest: Path, tiny_bert_dir: Path, tmp_path):
    config = tiny_config(
        manifest,
        tmp_path / "run",
        tiny_bert_dir,
        objective=objective,
        objective_params=PARAMS[objective],
        data__batch_size=4,
        train__val_every_steps=2,
        train__max_evals=1,
        train__limit_val_batches=1,
        data__max_val_pairs=4,
    )
    result = pretrain(config, build_objective)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["objective"] == objective and result.steps == 2
    metric = summary["best_checkpoint_metric"]
    expected_monitor = "val/cider" if objective.startswith("caption") else "val/loss"
    assert metric["name"] == expected_monitor and metric["value"] is not None
    assert metric["mode"] == ("max" if objective.startswith("caption") else "min")
    metrics = (result.output_dir / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics and expected_monitor in metrics
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()

    # Every objective's checkpoints are tensors and plain data: they load with weights_only=True.
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert load_checkpoint(result.best_checkpoint).objective == objective
    assert checkpoint["convirt"]["format_version"] == 1 and checkpoint["convirt"]["config"]["objective"] == objective
    trained = {
        k.removeprefix("model.image_encoder."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.image_encoder.")
    }
    encoder = load_image_encoder_from_checkpoint(result.last_checkpoint)
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, trained[key])
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = encoder(images)
        torch.testing.assert_close(load_image_encoder(str(result.last_checkpoint)).eval()(images), expected)

    written = export_checkpoint(result.last_checkpoint, tmp_path / "export")
    assert written["objective"] == objective and "image encoder only" in written["note"]
    meta = json.loads((tmp_path / "export" / "image_encoder.json").read_text())
    assert meta["architecture"] == "resnet18" and meta["objective"] == objective
    reference = torchvision.models.resnet18()
    missing = reference.load_state_dict(torch.load(written["image_encoder"], weights_only=True), strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"]
    reference.fc = torch.nn.Identity()
    with torch.no_grad():
        torch.testing.assert_close(reference.eval()(images), expected)
        torch.testing.assert_close(load_image_encoder(str(tmp_path / "export")).eval()(images), expected)
    with pytest.raises(CheckpointError, match="no text tower"):
        load_model(result.last_checkpoint)

    # The evaluation commands take the .ckpt unchanged: image-only h_v for retrieval, the objective as its init.
    embedder = load_embedder(str(result.last_checkpoint), image_size=64, device="cpu", fast=False)
    assert embedder.spaces == ("h_v",) and not embedder.has_text
    torch.testing.assert_close(embedder.embed_images(images, ["h_v"])["h_v"], torch.nn.functional.normalize(expected))
    random_like = load_embedder(f"random-like:{result.last_checkpoint}", image_size=64, device="cpu", fast=False)
    assert random_like.spaces == ("h_v",) and random_like.embed_images(images, ["h_v"])["h_v"].shape == expected.shape
    assert encoder_choice(str(result.last_checkpoint)).init == objective
    assert encoder_choice(str(tmp_path / "export")).init == objective


def test_unknown_objective_is_a_config_error(manifest: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="moco_v2"):
        build_objective(tiny_config(manifest, "/tmp/x", tiny_bert_dir, objective="byol"))
