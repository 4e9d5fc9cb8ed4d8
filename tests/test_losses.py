"""The ConVIRT loss against the paper's formula, and the distributed loss against the single-process one."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from convirt.losses import ConVIRTLoss, convirt_loss


def direct_formula(v: torch.Tensor, u: torch.Tensor, tau: float, lam: float) -> float:
    """The paper's equations written out with Python loops and math.exp (float64)."""
    n = v.shape[0]
    v = v.double() / v.double().norm(dim=1, keepdim=True)
    u = u.double() / u.double().norm(dim=1, keepdim=True)
    total = 0.0
    for i in range(n):
        v_to_u = -math.log(
            math.exp(float(v[i] @ u[i]) / tau) / sum(math.exp(float(v[i] @ u[k]) / tau) for k in range(n))
        )
        u_to_v = -math.log(
            math.exp(float(u[i] @ v[i]) / tau) / sum(math.exp(float(u[i] @ v[k]) / tau) for k in range(n))
        )
        total += lam * v_to_u + (1 - lam) * u_to_v
    return total / n


@pytest.mark.parametrize(("tau", "lam"), [(0.1, 0.75), (0.5, 0.5), (1.0, 0.0), (0.07, 1.0), (0.2, 0.3)])
def test_loss_equals_direct_formula(tau: float, lam: float) -> None:
    generator = torch.Generator().manual_seed(int(tau * 100 + lam * 10))
    v = torch.randn(9, 16, generator=generator)
    u = torch.randn(9, 16, generator=generator)
    assert convirt_loss(v, u, tau, lam).item() == pytest.approx(direct_formula(v, u, tau, lam), rel=1e-5)


def test_loss_is_invariant_to_embedding_scale_and_asymmetric_in_lambda() -> None:
    v, u = torch.randn(6, 8), torch.randn(6, 8)
    assert convirt_loss(3.0 * v, 0.5 * u).item() == pytest.approx(convirt_loss(v, u).item(), rel=1e-6)
    # lambda weights the image->text direction: swapping roles equals swapping lambda.
    assert convirt_loss(v, u, 0.1, 0.75).item() == pytest.approx(convirt_loss(u, v, 0.1, 0.25).item(), rel=1e-6)


def test_chance_level_and_perfect_alignment() -> None:
    constant = torch.ones(32, 4)
    assert convirt_loss(constant, constant).item() == pytest.approx(math.log(32), rel=1e-6)  # paper: 3.47
    eye = torch.eye(8)
    assert convirt_loss(eye, eye, temperature=0.01).item() < 1e-6


def test_loss_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        convirt_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError):
        ConVIRTLoss(lambda_=1.5)


# --- distributed: 2 gloo processes vs one process on the concatenated batch --------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _TwoTowers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(5, 4)
        self.text = torch.nn.Linear(7, 4)

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.image(images), self.text(texts)


def _make_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return _TwoTowers()


def _worker(rank: int, world: int, port: int, images_list: list, texts_list: list, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    # Plain lists cross the process boundary (shared-memory tensors would outlive their owner here).
    images, texts = torch.tensor(images_list), torch.tensor(texts_list)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DistributedDataParallel(_make_model())
        per = images.shape[0] // world
        local = slice(rank * per, (rank + 1) * per)
        loss_fn = ConVIRTLoss(temperature=0.1, lambda_=0.75)
        v, u = model(images[local], texts[local])  # through DDP, which averages gradients across processes
        loss = loss_fn(v, u)
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)
        grads = {name: p.grad.tolist() for name, p in model.module.named_parameters()}
        results.put((rank, float(global_loss) / world, grads))
        # Leave cleanly. A gloo worker thread releases a finished collective's tensors just after the caller has
        # been woken, and needs the GIL for it; if this process is already finalizing the interpreter by then,
        # that thread cannot take the GIL and the process aborts ("terminate called without an active
        # exception", exit -6). A barrier waits with the GIL released, so those threads finish first.
        del model, v, u, loss, global_loss
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_distributed_loss_and_gradients_match_single_process() -> None:
    torch.manual_seed(1)
    images, texts = torch.randn(8, 5), torch.randn(8, 7)

    model = _make_model()
    single = ConVIRTLoss(0.1, 0.75)(*model(images, texts))
    single.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}

    context = mp.get_context("spawn")
    results = context.Queue()
    port = _free_port()
    processes = [
        context.Process(target=_worker, args=(rank, 2, port, images.tolist(), texts.tolist(), results))
        for rank in range(2)
    ]
    for process in processes:
        process.start()
    outputs = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for _rank, loss, grads in outputs:
        assert loss == pytest.approx(single.item(), rel=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(torch.tensor(grad), expected[name], rtol=1e-5, atol=1e-6)


def test_without_gather_each_process_would_only_see_local_negatives() -> None:
    """Sanity check of the test above: the local-only loss differs from the global one."""
    torch.manual_seed(1)
    v, u = torch.randn(8, 4), torch.randn(8, 4)
    local_mean = (convirt_loss(v[:4], u[:4]) + convirt_loss(v[4:], u[4:])) / 2
    assert abs(local_mean.item() - convirt_loss(v, u).item()) > 1e-3
