"""Caption-LSTM and Caption-Transformer: hand-checked losses, vocabulary, gradients, learning on real pairs, and
greedy decoding that reproduces memorised reports (CIDEr against them is the maximum, 10)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from convirt.errors import ConfigError
from convirt.objectives import build_objective
from convirt.objectives.captioning import BOS, EOS, PAD, UNK, Vocabulary, attention_penalty, caption_loss
from convirt.text.cider import cider_d
from objective_fixtures import fixed_batch_training, image_encoder_gradients, optimizer_of, real_batch, small_manifest

SMALL = {
    "caption_lstm": "{min_count: 1, max_words: 8, embed_dim: 32, hidden_dim: 32, attention_dim: 16, dropout: 0.0}",
    "caption_transformer": "{min_count: 1, max_words: 8, d_model: 32, heads: 2, layers: 1, ffn_dim: 64, dropout: 0.0}",
}


def test_caption_loss_hand_checked() -> None:
    # Vocabulary of 3 (<pad> <bos> <eos>); target <bos> <eos> <pad>: only the first prediction counts.
    logits = torch.tensor([[[0.0, 0.0, math.log(2.0)], [5.0, -3.0, 1.0]]])  # softmax row 0: [1/4, 1/4, 1/2]
    tokens = torch.tensor([[BOS, EOS, PAD]])
    assert caption_loss(logits, tokens).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_attention_penalty_hand_checked() -> None:
    alphas = torch.tensor([[[0.2, 0.8], [1.0, 0.0]]])  # 2 steps x 2 regions
    # Both steps real: per-region sums 1.2 and 0.8 -> (0.2^2 + 0.2^2) / 2.
    assert attention_penalty(alphas, torch.tensor([[BOS, 5, EOS]])).item() == pytest.approx(0.04, abs=1e-6)
    # The second step predicts padding: sums 0.2 and 0.8 -> (0.64 + 0.04) / 2.
    assert attention_penalty(alphas, torch.tensor([[BOS, EOS, PAD]])).item() == pytest.approx(0.34, abs=1e-6)


def test_vocabulary() -> None:
    vocab = Vocabulary.build(["No effusion.", "No pneumothorax, no effusion", "Cardiomegaly"], min_count=2)
    assert vocab.words == ["<pad>", "<bos>", "<eos>", "<unk>", "no", "effusion"]
    ids = vocab.encode("No new effusion", max_words=10)
    assert ids == [BOS, 4, UNK, 5, EOS]
    assert vocab.encode("no effusion no effusion", max_words=2) == [BOS, 4, 5, EOS]
    assert vocab.decode([4, 5, EOS, 4]) == "no effusion"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, covid_prepared: Path) -> Path:
    return small_manifest(covid_prepared, tmp_path_factory.mktemp("captioning"))


def _parts(kind: str, manifest: Path, text_dir: Path, folder: Path, **overrides):
    torch.manual_seed(0)
    config = tiny_config(manifest, folder, text_dir, objective=kind, objective_params=SMALL[kind], **overrides)
    return build_objective(config)


@pytest.mark.parametrize("kind", ["caption_lstm", "caption_transformer"])
def test_gradients_and_a_few_steps_lower_the_loss(kind: str, manifest: Path, tiny_bert_dir: Path, tmp_path) -> None:
    parts = _parts(kind, manifest, tiny_bert_dir, tmp_path, optim__lr=1e-3)
    batch = real_batch(parts.data, 4)
    assert batch["tokens"][:, 0].eq(BOS).all() and len(batch["references"]) == 4
    total, reached = image_encoder_gradients(parts.module, batch)
    assert reached == total > 0
    before, after = fixed_batch_training(parts.module, batch, steps=4)
    assert after < before - 0.2, (before, after)


@pytest.mark.parametrize("kind", ["caption_lstm", "caption_transformer"])
def test_memorised_reports_decode_exactly(kind: str, manifest: Path, tiny_bert_dir: Path, tmp_path) -> None:
    """Trained on two real X-rays with their reports (first 8 words), greedy decoding gives those reports back."""
    # The LSTM needs more steps than the transformer to stop repeating words.
    steps, lr = (150, 5e-3) if kind == "caption_lstm" else (60, 3e-3)
    parts = _parts(kind, manifest, tiny_bert_dir, tmp_path, optim__lr=lr)
    module, data = parts.module, parts.data
    data.train_set.transform = data.val_set.transform  # deterministic views: memorise two fixed images
    batch = real_batch(data, 2)
    references = [module.vocab.decode(row[1:]) for row in batch["tokens"]]
    assert references[0] != references[1] and all(len(r.split()) >= 4 for r in references)
    optimizer = optimizer_of(module)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        module.train_loss(batch).backward()
        optimizer.step()
    decoded = module.decode_text(batch["images"])
    assert decoded == references
    mean, _ = cider_d(dict(enumerate(decoded)), {i: [r] for i, r in enumerate(references)})
    assert mean == pytest.approx(10.0)


def test_caption_config_errors(manifest: Path, tiny_bert_dir: Path) -> None:
    for params, key in (("{target: words}", "target"), ("{heads: 3}", "heads"), ("{min_count: 1000}", "min_count")):
        with pytest.raises(ConfigError, match=f"objective_params.{key}"):
            build_objective(
                tiny_config(manifest, "/tmp/x", tiny_bert_dir, objective="caption_transformer", objective_params=params)
            )
