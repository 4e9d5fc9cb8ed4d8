"""The frozen-text-layer cache (``model.frozen_text_cache``): same outputs and gradients as running the frozen
layers (without dropout), bounded, invalidated by loaded weights, and refused where it cannot be exact."""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from convirt.errors import ConfigError
from convirt.models.text import TextEncoder


def tiny_bert(layers: int = 3, attention: str = "sdpa", dropout: float = 0.1, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout)  # fmt: skip
    config._attn_implementation = attention
    return BertModel(config, add_pooling_layer=False)


# three sentences, one of them twice, padded to the longest (right padding, 0 = [PAD])
IDS = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 2, 0, 0], [1, 5, 6, 7, 2], [1, 9, 9, 2, 0]])
MASK = (IDS > 0).long()


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("frozen", [1, 3])
@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_cached_forward_and_gradients_equal_the_plain_ones_without_dropout(attention, frozen, pooling):
    bert = tiny_bert(attention=attention)
    plain = TextEncoder(bert, freeze_layers=frozen, pooling=pooling).eval()
    cached = TextEncoder(bert, freeze_layers=frozen, pooling=pooling, frozen_cache=100).eval()
    for ids, mask in ((IDS, MASK), (IDS[[1, 3], :4], MASK[[1, 3], :4])):  # the second: other padding, all hits
        expected, got = plain(ids, mask), cached(ids, mask)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        assert got.requires_grad == (frozen < 3)
        if frozen == 3:
            continue
        weights = torch.randn_like(expected)
        (expected * weights).sum().backward()
        reference = {n: p.grad.clone() for n, p in bert.named_parameters() if p.grad is not None}
        bert.zero_grad()
        (got * weights).sum().backward()
        grads = {n: p.grad.clone() for n, p in bert.named_parameters() if p.grad is not None}
        assert grads.keys() == reference.keys()  # the trainable layers, none of the frozen ones
        assert all(n.startswith(("encoder.layer.1.", "encoder.layer.2.")) for n in grads) and len(grads) == 2 * 16
        for name, value in grads.items():
            torch.testing.assert_close(value, reference[name], rtol=1e-4, atol=1e-6, msg=name)
        bert.zero_grad()
    assert len(cached._cache) == 3  # three distinct sentences, each computed once


def test_frozen_layers_lose_dropout_and_the_rest_keeps_it():
    bert = tiny_bert(dropout=0.5)
    all_frozen = TextEncoder(bert, freeze_layers=3, frozen_cache=10).train()
    eval_output = TextEncoder(bert, freeze_layers=3).eval()(IDS, MASK)
    # everything frozen and cached: training mode gives the dropout-free output, every time
    torch.testing.assert_close(all_frozen(IDS, MASK), eval_output, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(all_frozen(IDS, MASK), eval_output, rtol=1e-5, atol=1e-6)
    # without the cache the frozen layers apply dropout in training mode (the default behaviour)
    plain = TextEncoder(bert, freeze_layers=3).train()
    assert not torch.allclose(plain(IDS, MASK), eval_output)
    # with a trainable layer above the cache, dropout still acts there: two training forwards differ
    partly = TextEncoder(bert, freeze_layers=2, frozen_cache=10).train()
    assert not torch.allclose(partly(IDS, MASK), partly(IDS, MASK))
    assert bert.encoder.layer[0].training  # the frozen block's modes are restored after a cache miss


def test_cache_is_bounded_least_recent_first_and_a_pure_function_of_the_sentence():
    bert = tiny_bert()
    encoder = TextEncoder(bert, freeze_layers=2, frozen_cache=2).eval()
    encoder(IDS[:2], MASK[:2])  # sentences A, B
    encoder(IDS[3:4, :4], MASK[3:4, :4])  # C: A (least recently used) is dropped
    keys = [key[0] for key in encoder._cache]
    assert keys == [(1, 8, 2), (1, 9, 9, 2)]
    # a sentence's cached value does not depend on the batch (padding) it first came in: computed alone
    alone = TextEncoder(bert, freeze_layers=2, frozen_cache=5).eval()
    alone(IDS[1:2, :3], MASK[1:2, :3])
    assert torch.equal(alone._cache[((1, 8, 2), None)], encoder._cache[((1, 8, 2), None)])


def test_loaded_weights_clear_the_cache():
    encoder = TextEncoder(tiny_bert(seed=0), freeze_layers=2, frozen_cache=10).eval()
    other = TextEncoder(tiny_bert(seed=1), freeze_layers=2).eval()
    encoder(IDS, MASK)
    assert len(encoder._cache) == 3
    encoder.load_state_dict(other.state_dict())
    assert len(encoder._cache) == 0
    torch.testing.assert_close(encoder(IDS, MASK), other(IDS, MASK), rtol=1e-5, atol=1e-6)


def test_settings_the_cache_cannot_serve_are_refused():
    with pytest.raises(ConfigError, match="needs frozen layers"):
        TextEncoder(tiny_bert(), freeze_layers=0, frozen_cache=10)
    with pytest.raises(ConfigError, match="at least 0"):
        TextEncoder(tiny_bert(), freeze_layers=1, frozen_cache=-1)
    left_padded = torch.tensor([[0, 0, 1, 8, 2]])
    with pytest.raises(ConfigError, match="right-padded"):
        TextEncoder(tiny_bert(), freeze_layers=1, frozen_cache=10)(left_padded, (left_padded > 0).long())


def test_config_key_reaches_the_text_encoder(tiny_bert_dir, tmp_path):
    from conftest import tiny_config
    from convirt.encoders.build import create_model

    config = tiny_config(tmp_path / "m.csv", tmp_path / "out", tiny_bert_dir, model__frozen_text_cache=7)
    assert create_model(config).text_encoder.frozen_cache == 7
    with pytest.raises(ConfigError, match=r"model\.frozen_text_cache must be at least 0"):
        tiny_config(tmp_path / "m.csv", tmp_path / "out", tiny_bert_dir, model__frozen_text_cache=-1)
