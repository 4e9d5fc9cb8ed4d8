"""Models (plain PyTorch): image encoders, text encoder, projection heads and the ConVIRT module."""

from convirt.models.convirt import ConVIRT, ConVIRTOutput
from convirt.models.heads import ProjectionHead
from convirt.models.image import ImageEncoder, create_image_encoder
from convirt.models.text import TextEncoder, create_text_encoder, pool_tokens

__all__ = [
    "ConVIRT",
    "ConVIRTOutput",
    "ImageEncoder",
    "ProjectionHead",
    "TextEncoder",
    "create_image_encoder",
    "create_text_encoder",
    "pool_tokens",
]
