"""The Appendix B recipe: schedule, early stop and best checkpoint; cached vs paper linear probe; fine-tuning."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from convirt.data.labelled import LabelledTask
from convirt.errors import ConfigError
from convirt.evaluation.classification import ClassificationSettings
from convirt.evaluation.classification.features import cached_features, encode_images
from convirt.evaluation.classification.finetune import finetune
from convirt.evaluation.classification.linear import linear_probe_features, linear_probe_images, standardize_features
from convirt.evaluation.classification.metrics import Score
from convirt.evaluation.classification.training import EvalSplit, Recipe, fit, task_loss
from convirt.models.image import create_image_encoder

BINARY = LabelledTask(name="b", kind="binary", class_names=["normal", "pneumonia"])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes for a shared CPU)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_fit_halves_lr_after_3_bad_epochs_stops_after_10_and_keeps_best():
    module = nn.Linear(2, 1)
    inputs, targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0.0, 1.0])
    #          epoch: 1     2     3 (tie, lower loss)  4 .. 13 no improvement
    scripted = [(0.6, 0.5), (0.7, 0.5), (0.7, 0.4)] + [(0.5, 0.9)] * 20
    snapshots = []

    def validate():
        snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        value, loss = scripted[len(snapshots) - 1]
        return Score("auc", value), loss

    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    result = fit(
        BINARY, module, module, lambda epoch: [(inputs, np.arange(2))], targets, validate, optimizer,
        Recipe(max_epochs=50), module.train,
    )  # fmt: skip
    assert result.best_epoch == 3 and result.epochs == 13  # 10 epochs without improvement after epoch 3
    lrs = [h["lr"] for h in result.history]
    assert lrs[:6] == [0.1] * 6  # epochs 4, 5, 6 bad -> halved from epoch 7
    assert lrs[6:9] == [0.05] * 3 and lrs[9:12] == [0.025] * 3 and lrs[12] == 0.0125
    assert all(torch.equal(result.best_state[k], snapshots[2][k]) for k in snapshots[2])
    assert result.best_val.value == 0.7


def test_paper_default_learning_rates():
    covidx = LabelledTask(name="covidx", kind="multiclass", class_names=["a", "b", "c"], paper_key="covidx")
    assert Recipe().task_lr(covidx) == 1e-3 and Recipe().task_lr(BINARY) == 1e-4
    assert Recipe(lr=0.5).task_lr(covidx) == 0.5
    multilabel = LabelledTask(name="m", kind="multilabel", class_names=["a", "b"], label_columns=["a", "b"])
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    masked = task_loss(multilabel, logits, torch.tensor([[1.0, float("nan")], [0.0, 1.0]]))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.tensor([2.0, 0.5, 3.0]), torch.tensor([1.0, 0.0, 1.0])
    )
    assert masked.item() == pytest.approx(expected.item())


def _images(folder, n, seed):
    """Two classes told apart by brightness, with noise; returns (paths, labels)."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        label = k % 2
        pixels = np.clip(rng.normal(70 + 90 * label, 35, (20, 28)), 0, 255).astype(np.uint8)
        path = folder / f"{k}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
        labels.append(label)
    return paths, np.array(labels)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    splits = {
        name: _images(root / name, n, seed) for name, n, seed in (("train", 40, 0), ("val", 12, 1), ("test", 12, 2))
    }
    torch.manual_seed(0)
    encoder = create_image_encoder("resnet18").eval()
    return splits, encoder


def test_cached_feature_probe_agrees_with_paper_recipe(tiny, tmp_path):
    splits, encoder = tiny
    features = {
        name: cached_features(encoder, paths, tmp_path / "cache", image_size=32, batch_size=16, fast=False)
        for name, (paths, _) in splits.items()
    }
    again = cached_features(encoder, splits["val"][0], tmp_path / "cache", image_size=32, fast=False)
    assert torch.equal(again, features["val"]) and len(list((tmp_path / "cache").iterdir())) == 3

    def split(name, with_features):
        paths, labels = splits[name]
        return EvalSplit(labels, None, paths, features[name] if with_features else None)

    recipe = Recipe(lr=3e-3, batch_size=8, max_epochs=6)
    cached = linear_probe_features(BINARY, split("train", True), split("val", True), split("test", True), recipe, 3)
    paper = linear_probe_images(
        BINARY, encoder, split("train", False), split("val", False), split("test", False), recipe, 3, image_size=32,
        fast=False,
    )  # fmt: skip
    assert cached.best_epoch == paper.best_epoch and cached.epochs == paper.epochs
    assert np.allclose(cached.test_probabilities, paper.test_probabilities, atol=1e-4)
    assert cached.test.value == pytest.approx(paper.test.value, abs=0.01)
    assert cached.val.value == pytest.approx(paper.val.value, abs=0.01)
    assert cached.test.value > 0.75  # the brightness signal is linearly readable from random features
    other_seed = linear_probe_features(BINARY, split("train", True), split("val", True), split("test", True), recipe, 4)
    assert not np.allclose(other_seed.test_probabilities, cached.test_probabilities)


def test_standardize_is_the_train_zscore_and_makes_the_probe_blind_to_feature_scale():
    rng = np.random.default_rng(0)
    labels = {name: np.arange(n) % 2 for name, n in (("train", 40), ("val", 16), ("test", 16))}
    raw = {
        name: torch.tensor(rng.normal(0, 1, (len(y), 6)) + 3.0 * y[:, None] * np.eye(6)[0], dtype=torch.float32)
        for name, y in labels.items()
    }
    # by hand: train mean/std (population), applied to every split; a constant column is only centred
    train = torch.cat([raw["train"], torch.full((40, 1), 3.0)], dim=1)
    z_train, z_test = standardize_features(train, torch.cat([raw["test"], torch.full((16, 1), 3.0)], dim=1))
    column = train[:, 0].double()
    expected = (column - column.mean()) / column.std(unbiased=False)
    torch.testing.assert_close(z_train[:, 0], expected.float())
    assert torch.all(z_train[:, -1] == 0) and torch.all(z_test[:, -1] == 0)

    def splits(scale):
        return [EvalSplit(labels[n], None, [""] * len(labels[n]), raw[n] * scale) for n in ("train", "val", "test")]

    recipe = Recipe(lr=3e-2, batch_size=8, max_epochs=30, dropout=0.0)
    standard = Recipe(lr=3e-2, batch_size=8, max_epochs=30, dropout=0.0, standardize=True)
    plain = linear_probe_features(BINARY, *splits(1.0), standard, 0)
    tiny_scale = linear_probe_features(BINARY, *splits(1e-10), standard, 0)
    np.testing.assert_allclose(tiny_scale.test_probabilities, plain.test_probabilities, atol=1e-4)
    assert plain.test.value > 0.8
    assert linear_probe_features(BINARY, *splits(1e-10), recipe, 0).test.value <= 0.6  # unscaled: nothing to learn
    with pytest.raises(ConfigError, match="cached features only"):
        ClassificationSettings(protocol="finetune", training=standard)


def test_finetune_warmup_trains_only_the_head_then_everything(tiny):
    splits, encoder = tiny
    original = {k: v.clone() for k, v in encoder.state_dict().items()}
    paths, labels = splits["train"]
    train = EvalSplit(labels[:16], None, paths[:16])
    val = EvalSplit(splits["val"][1], None, splits["val"][0])
    test = EvalSplit(splits["test"][1], None, splits["test"][0])
    messages = []
    frozen_after_warmup = finetune(
        BINARY, encoder, train, val, test, Recipe(lr=0.0, batch_size=8, max_epochs=1, warmup_steps=3), seed=0,
        image_size=32, fast=False, log=messages.append,
    )  # fmt: skip
    assert messages[0].startswith("warm-up: 3 head-only steps at lr 0.001")
    assert frozen_after_warmup.test_probabilities.shape == (12,)
    trained = finetune(
        BINARY, encoder, train, val, test, Recipe(lr=1e-3, batch_size=8, max_epochs=2, warmup_steps=2), seed=0,
        image_size=32, fast=False,
    )  # fmt: skip
    assert trained.epochs == 2 and 0.0 <= trained.test.value <= 1.0
    assert all(torch.equal(original[k], v) for k, v in encoder.state_dict().items())  # caller's copy untouched


def test_finetune_warmup_leaves_conv_weights_alone(tiny, monkeypatch):
    splits, encoder = tiny
    seen = {}
    paths, labels = splits["train"]
    train = EvalSplit(labels[:16], None, paths[:16])
    val = EvalSplit(splits["val"][1], None, splits["val"][0])
    # lr 0 after the warm-up: any change in the convolution weights would have to come from the warm-up
    module = importlib.import_module("convirt.evaluation.classification.finetune")
    original_fit = module.fit

    def spying_fit(task, model, *args, **kwargs):  # called right after the warm-up
        seen["conv"] = model.encoder.backbone.conv1.weight.detach().clone()
        seen["head"] = model.head.linear.weight.detach().clone()
        return original_fit(task, model, *args, **kwargs)

    monkeypatch.setattr(module, "fit", spying_fit)
    torch.manual_seed(0)
    head_init = nn.Linear(512, 1).weight.detach().clone()  # what LinearHead draws under seed 0
    finetune(BINARY, encoder, train, val, val, Recipe(lr=0.0, batch_size=8, max_epochs=1, warmup_steps=4), seed=0,
             image_size=32, fast=False)  # fmt: skip
    assert torch.equal(seen["conv"], encoder.backbone.conv1.weight)
    assert not torch.equal(seen["head"], head_init)


def test_finetune_warmup_on_features_computed_once_equals_the_literal_warmup(tiny, monkeypatch):
    """The warm-up trains the head on features computed once; the literal recipe runs the frozen encoder on every
    warm-up batch. Same batches (5 steps of 8 from 16 images: across an epoch boundary), same head, same dropout."""
    from convirt.encoders.embedders import to_device
    from convirt.evaluation.classification.data import training_epochs
    from convirt.evaluation.classification.finetune import WARMUP_EPOCH_OFFSET
    from convirt.evaluation.classification.training import LinearHead

    splits, encoder = tiny
    paths, labels = splits["train"]
    train = EvalSplit(labels[:16], None, paths[:16])
    val = EvalSplit(splits["val"][1], None, splits["val"][0])
    recipe = Recipe(lr=0.0, batch_size=8, max_epochs=1, warmup_steps=5)
    module = importlib.import_module("convirt.evaluation.classification.finetune")
    seen, original_fit = {}, module.fit

    def spying_fit(task, model, *args, **kwargs):  # called right after the warm-up
        seen["head"] = {k: v.detach().clone() for k, v in model.head.state_dict().items()}
        seen["encoder_calls"] = calls[0]
        return original_fit(task, model, *args, **kwargs)

    calls = [0]
    # finetune trains a deep copy of the encoder, which carries this hook: it counts the copy's forward passes
    handle = encoder.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    monkeypatch.setattr(module, "fit", spying_fit)
    try:
        finetune(BINARY, encoder, train, val, val, recipe, seed=3, image_size=32, fast=False)
    finally:
        handle.remove()
    assert seen["encoder_calls"] == 2  # 16 images in batches of 8, once; the literal warm-up runs 5 batches

    torch.manual_seed(3)  # the literal warm-up, as the paper describes it
    head = LinearHead(encoder.feature_dim, 1, recipe.dropout)
    initial = head.linear.weight.detach().clone()
    optimizer = torch.optim.Adam(head.parameters(), lr=recipe.warmup_lr, weight_decay=recipe.weight_decay)
    targets = torch.as_tensor(train.targets, dtype=torch.float32)
    steps, round_ = 0, 0
    while steps < recipe.warmup_steps:
        for images, positions in training_epochs(train, 8, 3, 32)(WARMUP_EPOCH_OFFSET + round_):
            with torch.no_grad():
                features = encoder(to_device(images, "cpu", False))
            loss = task_loss(BINARY, head(features), targets[positions])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            if steps == recipe.warmup_steps:
                break
        round_ += 1
    for key, value in head.state_dict().items():
        torch.testing.assert_close(seen["head"][key], value, rtol=1e-4, atol=1e-5)
    assert not torch.equal(seen["head"]["linear.weight"], initial)


def test_encode_images_matches_manual_forward(tiny):
    splits, encoder = tiny
    from convirt.data.images import load_image
    from convirt.data.transforms import pad_resize_transform, pil_to_uint8_tensor

    paths = splits["test"][0][:3]
    batch = torch.stack([pad_resize_transform(32)(pil_to_uint8_tensor(load_image(p))) for p in paths])
    with torch.no_grad():
        expected = encoder(batch)
    assert torch.allclose(encode_images(encoder, paths, image_size=32, fast=False), expected, atol=1e-5)
