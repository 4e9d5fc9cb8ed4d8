"""Caption-LSTM and Caption-Transformer: learn the image encoder by generating the report from the image.

Both decode the report from the image encoder's last spatial feature map
(:meth:`~convirt.models.image.ImageEncoder.feature_maps`, e.g. 7 x 7 x 2048 for ResNet50 at 224 px), trained with
teacher forcing (cross-entropy of the next word, padding ignored). Validation every ``train.val_every_steps``:
the teacher-forced loss (val/loss, which drives the engine's plateau LR halving) and CIDEr-D of greedy-decoded
reports against the reference reports of the held-out (val) split (val/cider, computed with
:func:`convirt.text.cider.cider_d`); ``best.ckpt`` is the checkpoint with the highest val/cider.

- ``caption_lstm``: Show, Attend and Tell (Xu et al., 2015): soft additive attention over the grid, a gating
  scalar on the context, an LSTMCell fed [word embedding; context], initial state from the mean feature, dropout
  before the word classifier, and the doubly stochastic attention penalty
  ``alpha_c * mean_i (1 - sum_t alpha_ti)^2`` (``attention_penalty``, 1.0 as the paper; mean over regions i).
- ``caption_transformer``: the paper used the meshed-memory transformer (Cornia et al., 2020). This is a
  standard transformer decoder (pre-norm, M2's sizes: 3 layers, d_model 512, 8 heads, FFN 2048, dropout 0.1)
  cross-attending to the projected grid features with sinusoidal position encodings; no memory slots, no meshed
  connectivity. Documented as such in docs/baselines.md.

Targets: ``target: report`` (default) decodes the whole report (its sentences joined, cut to ``max_words``);
``target: sentence`` decodes the sentence sampled by the engine's paired dataset, and the CIDEr references are
then all the report's sentences. The word vocabulary is built from the training split's reports (words seen at
least ``min_count`` times, at most ``max_vocab``, plus <pad> <bos> <eos> <unk>) and stored in the checkpoint.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from convirt.config import Config
from convirt.data.manifest import read_paired_manifest
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder, create_image_encoder
from convirt.objectives.common import (
    ObjectiveDataModule,
    baseline_payload,
    require,
    require_at_least_one,
    typed_params,
)
from convirt.text.cider import caption_words, cider_d

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ["<pad>", "<bos>", "<eos>", "<unk>"]


@dataclass
class CaptionParams:
    """What both captioners share."""

    target: str = "report"  # report (the whole report) | sentence (the sentence the engine sampled)
    max_words: int = 100
    min_count: int = 5
    max_vocab: int = 10000
    max_val_decode: int = 0  # decode at most this many val images for CIDEr (0: all of the val set)
    dropout: float = 0.1

    def __post_init__(self) -> None:
        require(self.target in ("report", "sentence"), "target", f"must be report or sentence, got {self.target!r}")
        require_at_least_one(self, "max_words", "min_count", "max_vocab")
        require(self.max_vocab > len(SPECIALS), "max_vocab", f"must exceed {len(SPECIALS)}")
        require(self.max_val_decode >= 0, "max_val_decode", "must be 0 (all) or positive")
        require(0.0 <= self.dropout < 1.0, "dropout", f"must be in [0, 1), got {self.dropout}")


@dataclass
class CaptionLSTMParams(CaptionParams):
    """Show, Attend and Tell's sizes; dropout before the word classifier; the attention penalty's lambda."""

    embed_dim: int = 512
    hidden_dim: int = 512
    attention_dim: int = 512
    dropout: float = 0.5
    attention_penalty: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least_one(self, "embed_dim", "hidden_dim", "attention_dim")
        require(self.attention_penalty >= 0, "attention_penalty", "must be >= 0")


@dataclass
class CaptionTransformerParams(CaptionParams):
    """M2's sizes (a standard decoder, not M2: see the module docstring)."""

    d_model: int = 512
    heads: int = 8
    layers: int = 3
    ffn_dim: int = 2048
    dropout: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.d_model >= 2 and self.d_model % 2 == 0, "d_model", f"must be even, got {self.d_model}")
        require(self.heads >= 1 and self.d_model % self.heads == 0, "heads", "must divide d_model")
        require_at_least_one(self, "layers", "ffn_dim")


# -- vocabulary and batches ------------------------------------------------------------------------------------
class Vocabulary:
    def __init__(self, words: list[str]) -> None:
        self.words = list(words)
        self.index = {w: i for i, w in enumerate(self.words)}
        if self.words[: len(SPECIALS)] != SPECIALS:
            raise ValueError("a vocabulary starts with <pad> <bos> <eos> <unk>")

    def __len__(self) -> int:
        return len(self.words)

    @classmethod
    def build(cls, texts, min_count: int = 5, max_vocab: int = 10000) -> Vocabulary:
        counts = Counter(w for text in texts for w in caption_words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        return cls(SPECIALS + ranked[: max(0, max_vocab - len(SPECIALS))])

    def encode(self, text: str, max_words: int) -> list[int]:
        words = caption_words(text)[:max_words]
        return [BOS] + [self.index.get(w, UNK) for w in words] + [EOS]

    def decode(self, ids) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i in (PAD, BOS):
                continue
            words.append(self.words[i])
        return " ".join(words)


def report_text(sentences: list[str]) -> str:
    return " ".join(sentences)


class CaptionCollator:
    """Images + padded word ids (<bos> words <eos> <pad>...) + the CIDEr references of each row of ``manifest``."""

    def __init__(self, vocab: Vocabulary, manifest, target: str, max_words: int) -> None:
        self.vocab, self.manifest, self.target, self.max_words = vocab, manifest, target, max_words

    def references(self, row: int) -> list[str]:
        sentences = self.manifest.sentences[row]
        return [report_text(sentences)] if self.target == "report" else list(sentences)

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        texts = [
            report_text(self.manifest.sentences[s["index"]]) if self.target == "report" else s["text"] for s in samples
        ]
        encoded = [self.vocab.encode(t, self.max_words) for t in texts]
        tokens = torch.full((len(encoded), max(len(e) for e in encoded)), PAD, dtype=torch.long)
        for i, ids in enumerate(encoded):
            tokens[i, : len(ids)] = torch.tensor(ids)
        return {
            "images": torch.stack([s["image"] for s in samples]),
            "tokens": tokens,
            "index": torch.tensor([s["index"] for s in samples], dtype=torch.long),
            "references": [self.references(s["index"]) for s in samples],
            "skipped": [path for s in samples for path in s["skipped"]],
        }


def caption_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forced next-word cross-entropy: ``logits[:, t]`` predicts ``tokens[:, t + 1]``; padding ignored."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), ignore_index=PAD)


def attention_penalty(alphas: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Doubly stochastic attention: mean over images and regions of (1 - sum_t alpha_ti)^2, over the real steps.

    Show, Attend and Tell sums over the regions; the mean (as the widely used PyTorch port) keeps the term's size
    independent of the grid (49 regions at 224 px, 4 at 64 px).
    """
    mask = (tokens[:, 1:] != PAD).to(alphas.dtype).unsqueeze(-1)  # (N, T-1, 1)
    return ((1.0 - (alphas * mask).sum(dim=1)) ** 2).mean()


# -- decoders --------------------------------------------------------------------------------------------------
class AttentionLSTMDecoder(nn.Module):
    """Show, Attend and Tell's decoder over (N, L, C) annotation vectors."""

    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        embed_dim: int = 512,
        hidden_dim: int = 512,
        attention_dim: int = 512,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD)
        self.att_features = nn.Linear(feature_dim, attention_dim)
        self.att_hidden = nn.Linear(hidden_dim, attention_dim)
        self.att_score = nn.Linear(attention_dim, 1)
        self.init_h = nn.Linear(feature_dim, hidden_dim)
        self.init_c = nn.Linear(feature_dim, hidden_dim)
        self.gate = nn.Linear(hidden_dim, feature_dim)
        self.cell = nn.LSTMCell(embed_dim + feature_dim, hidden_dim)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)

    def start(self, features: torch.Tensor):
        mean = features.mean(dim=1)
        return (torch.tanh(self.init_h(mean)), torch.tanh(self.init_c(mean))), self.att_features(features)

    def step(self, words: torch.Tensor, state, features: torch.Tensor, projected: torch.Tensor):
        h, c = state
        scores = self.att_score(torch.tanh(projected + self.att_hidden(h).unsqueeze(1))).squeeze(-1)
        alpha = scores.softmax(dim=1)
        context = torch.sigmoid(self.gate(h)) * (alpha.unsqueeze(-1) * features).sum(dim=1)
        h, c = self.cell(torch.cat([self.embed(words), context], dim=1), (h, c))
        return self.out(self.dropout(h)), (h, c), alpha

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state, projected = self.start(features)
        logits, alphas = [], []
        for t in range(tokens.shape[1] - 1):
            logit, state, alpha = self.step(tokens[:, t], state, features, projected)
            logits.append(logit)
            alphas.append(alpha)
        return torch.stack(logits, dim=1), torch.stack(alphas, dim=1)

    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_len: int) -> torch.Tensor:
        state, projected = self.start(features)
        words = torch.full((features.shape[0],), BOS, dtype=torch.long, device=features.device)
        out = []
        for _ in range(max_len):
            logit, state, _ = self.step(words, state, features, projected)
            words = logit.argmax(dim=-1)
            out.append(words)
        return torch.stack(out, dim=1)


def sinusoidal_positions(length: int, dim: int, device=None) -> torch.Tensor:
    position = torch.arange(length, dtype=torch.float32, device=device).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim, device=device)
    table[:, 0::2] = torch.sin(position * div)
    table[:, 1::2] = torch.cos(position * div[: dim // 2])
    return table


class TransformerCaptionDecoder(nn.Module):
    """A standard (pre-norm) transformer decoder cross-attending to the projected grid features."""

    def __init__(
        self,
        feature_dim: int,
        vocab_size: int,
        d_model: int = 512,
        heads: int = 8,
        layers: int = 3,
        ffn_dim: int = 2048,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.memory = nn.Sequential(
            nn.Linear(feature_dim, d_model), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.LayerNorm(d_model)
        )
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD)
        layer = nn.TransformerDecoderLayer(d_model, heads, ffn_dim, dropout, batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(d_model))
        self.out = nn.Linear(d_model, vocab_size)

    def encode(self, features: torch.Tensor) -> torch.Tensor:
        memory = self.memory(features)
        return memory + sinusoidal_positions(memory.shape[1], self.d_model, memory.device)

    def _logits(self, memory: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        length = inputs.shape[1]
        x = self.embed(inputs) * math.sqrt(self.d_model) + sinusoidal_positions(length, self.d_model, inputs.device)
        # boolean like the padding mask (True = may not attend): a later position is hidden from every earlier one
        causal = torch.ones(length, length, dtype=torch.bool, device=inputs.device).triu(diagonal=1)
        hidden = self.decoder(x, memory, tgt_mask=causal, tgt_key_padding_mask=inputs == PAD)
        return self.out(hidden)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self._logits(self.encode(features), tokens[:, :-1]), None

    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_len: int) -> torch.Tensor:
        memory = self.encode(features)
        inputs = torch.full((features.shape[0], 1), BOS, dtype=torch.long, device=features.device)
        for _ in range(max_len):
            words = self._logits(memory, inputs)[:, -1].argmax(dim=-1, keepdim=True)
            inputs = torch.cat([inputs, words], dim=1)
        return inputs[:, 1:]


class CaptionModel(nn.Module):
    def __init__(self, image_encoder: ImageEncoder, decoder: nn.Module) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.decoder = decoder

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.image_encoder.feature_maps(images).flatten(2).transpose(1, 2)  # (N, H*W, C)

    def forward(self, images: torch.Tensor, tokens: torch.Tensor):
        return self.decoder(self.features(images), tokens)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, max_len: int) -> torch.Tensor:
        return self.decoder.generate(self.features(images), max_len)


# -- the Lightning module ---------------------------------------------------------------------------------------
class CaptionModule(ObjectiveModule):
    monitor = ("val/cider", "max")
    loss_name = "caption loss (teacher-forced cross-entropy)"

    def __init__(
        self, config: Config, model: CaptionModel, payload: dict[str, Any], params: CaptionParams, vocab: Vocabulary
    ) -> None:
        super().__init__(config, model, payload)
        self.params, self.vocab = params, vocab
        self.penalty = getattr(params, "attention_penalty", 0.0)  # Caption-LSTM's doubly stochastic attention
        self._decoded: list[tuple[int, str, list[str]]] = []

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        tokens = batch["tokens"]
        logits, alphas = self.model(self.image_batch(batch["images"]), tokens)
        loss = caption_loss(logits, tokens)
        if alphas is not None and self.penalty > 0:
            loss = loss + self.penalty * attention_penalty(alphas.float(), tokens)
        return loss

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        self._decoded = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        limit = self.params.max_val_decode
        if limit and len(self._decoded) >= limit:
            return
        generated = self.model.generate(self.image_batch(batch["images"]), self.params.max_words + 1)
        for row, ids, refs in zip(batch["index"].tolist(), generated.cpu(), batch["references"], strict=True):
            self._decoded.append((row, self.vocab.decode(ids), refs))

    def on_validation_epoch_end(self) -> None:
        decoded = self._decoded
        if dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, decoded)
            decoded = [item for part in gathered for item in part]
        unique = {row: (cand, refs) for row, cand, refs in decoded}  # padded shards repeat rows
        if len(unique) >= 2:
            score, _ = cider_d({r: c for r, (c, _) in unique.items()}, {r: refs for r, (_, refs) in unique.items()})
            self.log("val/cider", score, prog_bar=True, sync_dist=False)
            self.last_samples = list(unique.items())[:3]
        super().on_validation_epoch_end()

    def decode_text(self, images: torch.Tensor, max_words: int | None = None) -> list[str]:
        """Greedy reports for a batch of model-input images."""
        was_training = self.model.training
        self.model.eval()
        try:
            ids = self.model.generate(images, (max_words or self.params.max_words) + 1)
        finally:
            self.model.train(was_training)
        return [self.vocab.decode(row) for row in ids.cpu()]


def _data_and_vocab(config: Config, params: CaptionParams):
    d = config.data
    train_manifest = read_paired_manifest(d.manifest, split="train", image_root=d.image_root) if d.manifest else None
    if train_manifest is None:
        raise ConfigError("data.manifest is not set: pass data.manifest=PATH (a manifest from `convirt prepare`)")
    vocab = Vocabulary.build(
        (s for row in range(len(train_manifest)) for s in train_manifest.sentences[row]),
        params.min_count,
        params.max_vocab,
    )
    if len(vocab) <= len(SPECIALS):
        raise ConfigError(
            f"objective_params.min_count={params.min_count}: no training word occurs that often; lower it"
        )
    data = ObjectiveDataModule(
        config, lambda dataset: CaptionCollator(vocab, dataset.manifest, params.target, params.max_words)
    )
    data.setup("fit")
    return data, vocab


def _build(config: Config, params: CaptionParams, make_decoder) -> ObjectiveParts:
    data, vocab = _data_and_vocab(config, params)
    encoder = create_image_encoder(config.model.image_encoder, config.model.image_weights)
    with torch.no_grad():
        channels = encoder.feature_maps(torch.zeros(1, 3, 64, 64)).shape[1]
    model = CaptionModel(encoder, make_decoder(channels, len(vocab)))
    payload = baseline_payload(config, params, vocabulary=vocab.words)
    return ObjectiveParts(CaptionModule(config, model, payload, params, vocab), data)


def build_lstm(config: Config) -> ObjectiveParts:
    p = typed_params(config, CaptionLSTMParams)

    def decoder(channels: int, vocab_size: int) -> nn.Module:
        return AttentionLSTMDecoder(channels, vocab_size, p.embed_dim, p.hidden_dim, p.attention_dim, p.dropout)

    return _build(config, p, decoder)


def build_transformer(config: Config) -> ObjectiveParts:
    p = typed_params(config, CaptionTransformerParams)

    def decoder(channels: int, vocab_size: int) -> nn.Module:
        return TransformerCaptionDecoder(channels, vocab_size, p.d_model, p.heads, p.layers, p.ffn_dim, p.dropout)

    return _build(config, p, decoder)
