"""Contrastive-Binary text-image retrieval: a tiny real run's checkpoint keeps the text tower and the pair classifier,
and text queries rank images by the classifier's logit (checked against the model's own forward pass, and on a
planted pair whose ranking is known by hand)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import tiny_config
from convirt.encoders.checkpoint import load_checkpoint, load_pair_classifier
from convirt.encoders.embedders import PairClassifierEmbedder, load_embedder
from convirt.engine.train import pretrain
from convirt.errors import ConfigError
from convirt.evaluation.retrieval import evaluate_labelled
from convirt.objectives import build_objective
from objective_fixtures import small_manifest

pytestmark = pytest.mark.slow

SENTENCES = ["No acute cardiopulmonary process.", "Bilateral patchy opacities, worse on the left."]


@pytest.fixture(scope="module")
def binary_checkpoint(tmp_path_factory, covid_prepared: Path, tiny_bert_dir: Path) -> Path:
    """Two training steps of the Contrastive-Binary objective on real COVID-19 pairs."""
    folder = tmp_path_factory.mktemp("binary-retrieval")
    config = tiny_config(
        small_manifest(covid_prepared, folder, train=8, val=8),
        folder / "run",
        tiny_bert_dir,
        objective="contrastive_binary",
        objective_params="{hidden_dim: 16}",
        data__batch_size=4,
        train__val_every_steps=2,
        train__max_evals=1,
        train__limit_val_batches=1,
        data__max_val_pairs=4,
    )
    return pretrain(config, build_objective).last_checkpoint


def write_images(folder: Path, n: int = 4) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        path = folder / f"image{i}.png"
        Image.fromarray(rng.integers(0, 256, (72, 64), dtype=np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_checkpoint_keeps_the_text_tower_and_the_pair_classifier(binary_checkpoint: Path) -> None:
    checkpoint = load_checkpoint(binary_checkpoint)
    assert checkpoint.objective == "contrastive_binary"
    assert (
        isinstance(checkpoint.payload["text_config"], dict)
        and "tokenizer.json" in checkpoint.payload["tokenizer_files"]
    )
    prefixes = {key.split(".")[1] for key in checkpoint.state_dict}
    assert prefixes == {"image_encoder", "text_encoder", "image_proj", "text_proj", "classifier"}
    loaded = load_pair_classifier(checkpoint)
    rebuilt = loaded.model.state_dict()
    assert all(".pooler." in key for key in rebuilt if f"model.{key}" not in checkpoint.state_dict)  # unused
    for key, value in rebuilt.items():
        if f"model.{key}" in checkpoint.state_dict:
            torch.testing.assert_close(value, checkpoint.state_dict[f"model.{key}"], msg=key)
    assert load_embedder(str(binary_checkpoint)).label == "contrastive_binary"


def test_text_queries_rank_images_by_the_pair_classifier(binary_checkpoint: Path, tmp_path: Path) -> None:
    embedder = load_embedder(str(binary_checkpoint), device="cpu", fast=False)
    assert isinstance(embedder, PairClassifierEmbedder) and embedder.init == "contrastive_binary"
    assert embedder.spaces == ("h_v",) and embedder.text_space == "pair" and not embedder.has_text
    with pytest.raises(ConfigError, match="no text embedding space"):
        embedder.embed_texts(SENTENCES)
    paths = write_images(tmp_path)
    pair = embedder.embed_images(paths, ["h_v", "pair"])["pair"]
    scores = embedder.score_texts(SENTENCES, pair)
    assert scores.shape == (2, 4)

    # The same logits from the model's own forward pass over each (image, sentence) pair, as in training.
    model = embedder.model
    images = torch.stack([embedder.preprocess(p) for p in paths])
    for q, sentence in enumerate(SENTENCES):
        tokens = embedder.tokenizer([sentence] * len(paths), padding=True, return_tensors="pt")
        with torch.no_grad():
            real, _ = model(images, tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"))
        torch.testing.assert_close(scores[q], real, rtol=1e-4, atol=1e-5)


def test_a_planted_pair_is_retrieved_first(binary_checkpoint: Path, tmp_path: Path) -> None:
    embedder = load_embedder(str(binary_checkpoint), device="cpu", fast=False)
    model = embedder.model
    paths = write_images(tmp_path)
    with torch.no_grad():
        v0 = embedder.embed_images(paths, ["pair"])["pair"][:, 0]
        tokens = embedder.tokenizer(SENTENCES, padding=True, return_tensors="pt")
        u = model.text_proj(model.text_encoder(tokens["input_ids"], tokens["attention_mask"]))
        # The classifier becomes -|v_0 - u_0|: hidden units ReLU(v_0 - u_0) and ReLU(u_0 - v_0), output minus both.
        first, second = model.classifier[0], model.classifier[2]
        d = model.image_proj.out_features
        for layer in (first, second):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, 0], first.weight[0, d] = 1.0, -1.0
        first.weight[1, 0], first.weight[1, d] = -1.0, 1.0
        second.weight[0, 0] = second.weight[0, 1] = -1.0
        # Plant: shift u_0 so that sentence 0 sits exactly on image 2 (score 0, every other image scores below 0).
        model.text_proj.bias[0] += v0[2] - u[0, 0]
        u0 = u[:, 0] + (v0[2] - u[0, 0])
    scores = embedder.score_texts(SENTENCES, embedder.embed_images(paths, ["pair"])["pair"])
    torch.testing.assert_close(scores, -(v0[None, :] - u0[:, None]).abs(), rtol=1e-4, atol=1e-5)
    assert int(scores[0].argmax()) == 2 and float(scores[0, 2]) == pytest.approx(0.0, abs=1e-5)

    # Retrieval: image 2 is the only image of class A (sentence 0's class); the others are B (sentence 1's).
    labels = ["B", "B", "A", "B"]
    report = evaluate_labelled([embedder], paths, labels, {"A": [SENTENCES[0]], "B": [SENTENCES[1]]}, ks=[1, 2, 3])
    assert [(r.task, r.space) for r in report.results] == [("image_image", "h_v"), ("text_image", "pair")]
    text = report.results[1]
    assert text.per_category["A"] == {1: 100.0, 2: 50.0, 3: pytest.approx(100 / 3)}
    # Sentence 1 by hand: images in order of |v_0 - u_0|, a hit wherever the image is of class B.
    order = np.argsort(np.abs(v0.numpy() - float(u0[1])), kind="stable")
    hits = np.asarray(labels)[order] == "B"
    assert text.per_category["B"] == {k: pytest.approx(100 * hits[:k].mean()) for k in (1, 2, 3)}
