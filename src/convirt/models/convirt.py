"""The ConVIRT model: image encoder + text encoder + two projection heads (plain PyTorch)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convirt.models.heads import HeadKind, ProjectionHead
from convirt.models.image import ImageEncoder
from convirt.models.text import TextEncoder


@dataclass
class ConVIRTOutput:
    image_features: torch.Tensor  # h_v (N, D_v)
    text_features: torch.Tensor  # h_u (N, D_u)
    image_embeddings: torch.Tensor  # v = g_v(h_v) (N, d), not normalised
    text_embeddings: torch.Tensor  # u = g_u(h_u) (N, d), not normalised


class ConVIRT(nn.Module):
    def __init__(
        self,
        image_encoder: ImageEncoder,
        text_encoder: TextEncoder,
        projection_dim: int = 512,
        head: HeadKind = "mlp",
        head_hidden_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_head = ProjectionHead(image_encoder.feature_dim, projection_dim, head, head_hidden_dim)
        self.text_head = ProjectionHead(text_encoder.feature_dim, projection_dim, head, head_hidden_dim)

    def encode_image(self, images: torch.Tensor, project: bool = True) -> torch.Tensor:
        features = self.image_encoder(images)
        return self.image_head(features) if project else features

    def encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        project: bool = True,
    ) -> torch.Tensor:
        features = self.text_encoder(input_ids, attention_mask, token_type_ids)
        return self.text_head(features) if project else features

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> ConVIRTOutput:
        h_v = self.image_encoder(images)
        h_u = self.text_encoder(input_ids, attention_mask, token_type_ids)
        return ConVIRTOutput(h_v, h_u, self.image_head(h_v), self.text_head(h_u))
