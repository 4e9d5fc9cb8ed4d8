"""Build models, tokenizers and transforms from a :class:`convirt.config.Config` (no hidden globals)."""

from __future__ import annotations

from convirt.config import Config, ModelConfig
from convirt.data.transforms import AugmentationParams, paper_augmentation, resize_transform
from convirt.models.convirt import ConVIRT
from convirt.models.image import create_image_encoder
from convirt.models.text import create_text_encoder, load_tokenizer


def create_model(config: Config | ModelConfig, image_weights: str | None = "from-config") -> ConVIRT:
    """The ConVIRT model described by ``config`` (``image_weights`` overrides ``model.image_weights``)."""
    model_config = config.model if isinstance(config, Config) else config
    weights = model_config.image_weights if image_weights == "from-config" else image_weights
    image_encoder = create_image_encoder(model_config.image_encoder, weights)
    text_encoder = create_text_encoder(
        model_config.text_encoder,
        freeze_layers=model_config.freeze_layers,
        pooling=model_config.pooling,  # type: ignore[arg-type]
        random_init=model_config.text_weights == "random",
    )
    model = ConVIRT(
        image_encoder,
        text_encoder,
        projection_dim=model_config.projection_dim,
        head=model_config.head,  # type: ignore[arg-type]
        head_hidden_dim=model_config.head_hidden_dim,
    )
    return model.train()  # Hugging Face returns models in eval mode; the text tower trains with its dropout


def create_tokenizer(config: Config | ModelConfig):
    model_config = config.model if isinstance(config, Config) else config
    return load_tokenizer(model_config.text_encoder, model_config.text_lowercase)


def augmentation_params(config: Config) -> AugmentationParams:
    a = config.data.augment
    return AugmentationParams(
        crop_area=tuple(a.crop_area),
        crop_aspect_ratio=tuple(a.crop_aspect_ratio),
        hflip_p=a.hflip_p,
        rotation_degrees=a.rotation_degrees,
        translate=a.translate,
        affine_scale=tuple(a.affine_scale),
        brightness=tuple(a.brightness),
        contrast=tuple(a.contrast),
        blur_sigma=tuple(a.blur_sigma),
        blur_kernel_size=a.blur_kernel_size,
        output_size=a.output_size,
    )


def image_transforms(config: Config, train: bool = True):
    """The paper's augmentation family for training, a plain resize for validation/embedding."""
    params = augmentation_params(config)
    return paper_augmentation(params) if train else resize_transform(params.output_size)
