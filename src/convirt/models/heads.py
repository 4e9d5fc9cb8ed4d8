"""Projection heads g_v and g_u: W2 * ReLU(W1 * h) to d = 512 (paper), or a single linear map (ablation).

No BatchNorm: the paper's heads are plain MLPs, and BatchNorm in a contrastive head couples the examples of a
batch.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from convirt.errors import ConfigError

HeadKind = Literal["mlp", "linear"]


class ProjectionHead(nn.Module):
    def __init__(self, in_dim: int, out_dim: int = 512, kind: HeadKind = "mlp", hidden_dim: int | None = None) -> None:
        super().__init__()
        if kind == "mlp":
            hidden = hidden_dim or in_dim
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))
        elif kind == "linear":
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim))
        else:
            raise ConfigError(f"unknown projection head {kind!r}; use mlp or linear")
        self.in_dim, self.out_dim, self.kind = in_dim, out_dim, kind

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)
