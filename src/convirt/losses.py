"""The ConVIRT bidirectional contrastive loss (plain PyTorch), single-process and distributed.

For a minibatch of N pairs with cosine similarity <a, b> and temperature tau::

    l_i(v->u) = -log( exp(<v_i,u_i>/tau) / sum_k exp(<v_i,u_k>/tau) )
    l_i(u->v) = -log( exp(<u_i,v_i>/tau) / sum_k exp(<u_i,v_k>/tau) )
    L = (1/N) sum_i [ lambda * l_i(v->u) + (1 - lambda) * l_i(u->v) ]

Distributed training: every process gathers the embeddings of all processes **with gradients**
(:func:`gather_with_grad`), so the negatives are global. Each process computes the loss of its own rows against
all columns; the mean over processes equals the single-process loss on the concatenated batch, and because the
gather's backward sums the gradients of all processes while DDP averages parameter gradients, the parameter
gradients equal the single-process ones as well.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sums each process's gradient for every slice and returns this rank's slice.

    Implemented with all_reduce (supported by every backend, gloo included; gloo has no reduce_scatter).
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        world_size, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.batch = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.batch : (ctx.rank + 1) * ctx.batch]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` (same shape on every process) from all processes, keeping the autograd graph."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def convirt_loss(
    image_embeddings: torch.Tensor,
    text_embeddings: torch.Tensor,
    temperature: float = 0.1,
    lambda_: float = 0.75,
    image_candidates: torch.Tensor | None = None,
    text_candidates: torch.Tensor | None = None,
    offset: int = 0,
) -> torch.Tensor:
    """Bidirectional InfoNCE between rows ``v`` and ``u`` (cosine similarity / ``temperature``).

    With ``image_candidates``/``text_candidates`` (the gathered global batch) the rows are scored against all
    candidates and the positive of row i is candidate ``offset + i``. Computed in float32 for stability.
    """
    if image_embeddings.shape != text_embeddings.shape:
        raise ValueError(f"embedding shapes differ: {tuple(image_embeddings.shape)} vs {tuple(text_embeddings.shape)}")
    if temperature <= 0:
        raise ValueError("temperature must be positive")
    v = F.normalize(image_embeddings.float(), dim=-1)
    u = F.normalize(text_embeddings.float(), dim=-1)
    v_all = v if image_candidates is None else F.normalize(image_candidates.float(), dim=-1)
    u_all = u if text_candidates is None else F.normalize(text_candidates.float(), dim=-1)
    targets = torch.arange(v.shape[0], device=v.device) + offset
    image_to_text = F.cross_entropy(v @ u_all.t() / temperature, targets)
    text_to_image = F.cross_entropy(u @ v_all.t() / temperature, targets)
    return lambda_ * image_to_text + (1.0 - lambda_) * text_to_image


class ConVIRTLoss(nn.Module):
    """The loss as a module; gathers negatives across processes when torch.distributed is initialised.

    In a distributed run the returned value is this process's share (its rows against all columns); the mean over
    processes is the loss of the global batch. Every process must pass the same batch size.
    """

    def __init__(self, temperature: float = 0.1, lambda_: float = 0.75, gather: bool = True) -> None:
        super().__init__()
        if not 0.0 <= lambda_ <= 1.0:
            raise ValueError("lambda_ must be in [0, 1]")
        self.temperature, self.lambda_, self.gather = temperature, lambda_, gather

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        if not (self.gather and is_distributed()):
            return convirt_loss(image_embeddings, text_embeddings, self.temperature, self.lambda_)
        all_v = gather_with_grad(image_embeddings)
        all_u = gather_with_grad(text_embeddings)
        offset = dist.get_rank() * image_embeddings.shape[0]
        return convirt_loss(
            image_embeddings, text_embeddings, self.temperature, self.lambda_, all_v, all_u, offset=offset
        )
