"""The Contrastive-Binary baseline's model (plain PyTorch): ConVIRT's two encoders and a binary pair classifier.

h_v and h_u are each projected linearly to ``projection_dim``, concatenated, and an MLP (2d -> ``hidden_dim`` -> 1,
ReLU) gives the logit that the (image, sentence) pair is real. Trained by :mod:`convirt.objectives.contrastive_binary`;
text-image retrieval ranks the candidate images of a sentence by this logit (:meth:`PairClassifier.score`).
"""

from __future__ import annotations

import torch
from torch import nn

from convirt.models.image import ImageEncoder
from convirt.models.text import TextEncoder


def random_derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of range(n) with no fixed point (n >= 2), by rejection."""
    if n < 2:
        raise ValueError("a derangement needs at least 2 items")
    while True:
        order = torch.randperm(n, generator=generator)
        if not bool((order == torch.arange(n)).any()):
            return order


class PairClassifier(nn.Module):
    def __init__(
        self, image_encoder: ImageEncoder, text_encoder: TextEncoder, projection_dim: int = 512, hidden_dim: int = 512
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.image_proj = nn.Linear(image_encoder.feature_dim, projection_dim)
        self.text_proj = nn.Linear(text_encoder.feature_dim, projection_dim)
        self.classifier = nn.Sequential(
            nn.Linear(2 * projection_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 1)
        )

    def pair_logits(self, image_projected: torch.Tensor, text_projected: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.cat([image_projected, text_projected], dim=1)).squeeze(1)

    def score(self, image_projected: torch.Tensor, text_projected: torch.Tensor) -> torch.Tensor:
        """(Q, N) logits that text ``q`` and image ``n`` are a real pair, every sentence against every image."""
        n = image_projected.shape[0]
        rows = [self.pair_logits(image_projected, text.expand(n, -1)) for text in text_projected]
        return torch.stack(rows) if rows else image_projected.new_empty(0, n)

    def forward(self, images, input_ids, attention_mask, token_type_ids=None, fake_order=None):
        """(real logits, fake logits): the fake pairs match image i with text ``fake_order[i]``."""
        v = self.image_proj(self.image_encoder(images))
        u = self.text_proj(self.text_encoder(input_ids, attention_mask, token_type_ids))
        if fake_order is None:
            fake_order = random_derangement(v.shape[0])
        return self.pair_logits(v, u), self.pair_logits(v, u[fake_order.to(u.device)])
