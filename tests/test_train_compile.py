"""``train.compile``: torch.compile of the encoders in ObjectiveModule.on_fit_start gives the eager losses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_config, write_paired_manifest, write_tiny_bert
from convirt.config import load_config
from convirt.errors import ConfigError
from convirt.objectives import build_objective
from convirt.runtime import compile_unavailable
from objective_fixtures import optimizer_of


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A 2-layer, 32-wide BERT without dropout: compiled dropout draws other random numbers than eager dropout, so
    only a model without it can give the same training loss both ways."""
    folder = tmp_path_factory.mktemp("bert-no-dropout")
    return write_tiny_bert(folder, minilm_dir, layers=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def two_training_steps(manifest: Path, output: Path, text: Path, compile_: bool):
    """The training losses of two Adam steps on one real batch and the gradients of the first, with the encoders
    compiled by on_fit_start when ``compile_``; returns (losses, gradients by name, module)."""
    config = tiny_config(manifest, output, text, **{"train.compile": compile_, "data.augment.output_size": 32,
                                                    "model.freeze_layers": 1})  # fmt: skip
    torch.manual_seed(0)
    parts = build_objective(config)
    module = parts.module
    module.on_fit_start()  # channels-last (the default), then compile when train.compile
    parts.data.setup("fit")
    dataset = parts.data.train_set
    batch = parts.data.collate([dataset[(i, 1000 + i)] for i in range(4)])  # seeded per draw: the same both times
    batch["images"] = module.image_batch(batch["images"])
    module.train()
    optimizer = optimizer_of(module)
    losses, gradients = [], {}
    for step in range(2):
        optimizer.zero_grad()
        loss = module.train_loss(batch)
        loss.backward()
        if step == 0:
            gradients = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses, gradients, module


@pytest.mark.slow  # compiling a ResNet18 and a BERT forward + backward takes minutes on 2 busy cores
@pytest.mark.skipif(compile_unavailable("cpu") is not None, reason=str(compile_unavailable("cpu")))
def test_a_compiled_training_step_gives_the_eager_loss(tmp_path: Path, no_dropout_bert: Path) -> None:
    manifest = write_paired_manifest(tmp_path / "data", train=8, val=4, size=40)
    torch.set_num_threads(1)
    eager, eager_grads, eager_module = two_training_steps(manifest, tmp_path / "e", no_dropout_bert, compile_=False)
    compiled, grads, compiled_module = two_training_steps(manifest, tmp_path / "c", no_dropout_bert, compile_=True)
    encoders = compiled_module.compiled_encoders()
    assert [type(e).__name__ for e in encoders] == ["ImageEncoder", "TextEncoder"]
    assert all(e._compiled_call_impl is not None for e in encoders)  # compiled in place by on_fit_start
    assert all(e._compiled_call_impl is None for e in eager_module.compiled_encoders())
    # the same parameter names, so checkpoints of compiled runs load anywhere
    assert list(compiled_module.state_dict()) == list(eager_module.state_dict())
    # the first step: the same loss and gradients up to float32 rounding (fused kernels add in another order;
    # compared by norm, as single near-zero entries differ relatively more)
    assert compiled[0] == pytest.approx(eager[0], rel=1e-5)
    assert grads.keys() == eager_grads.keys()

    def flat(gradients: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([g.flatten() for g in gradients.values()])

    assert float((flat(grads) - flat(eager_grads)).norm() / flat(eager_grads).norm()) < 1e-3
    # tensor by tensor, where the gradient is not zero in exact arithmetic (the attention key biases' is: softmax
    # ignores a shift shared by all keys, so theirs is rounding noise both ways)
    largest = max(float(g.norm()) for g in eager_grads.values())
    for name, gradient in grads.items():
        reference = eager_grads[name]
        if float(reference.norm()) > 1e-3 * largest:
            difference = float((gradient - reference).norm() / reference.norm())
            assert difference < 1e-3, f"{name}: the gradient differs by {difference:.2e} of its norm"
    # after one Adam step: Adam divides each gradient by its own size, so rounding in near-zero gradients moves
    # those weights by a full step either way; the loss stays close, not equal
    assert eager[1] != pytest.approx(eager[0], rel=1e-3)  # the step changed the weights
    assert compiled[1] == pytest.approx(eager[1], rel=1e-2)


def test_compile_is_off_by_default_and_validated() -> None:
    assert load_config(None).train.compile is False
    assert load_config(None, ["train.compile=true"]).train.compile is True
    with pytest.raises(ConfigError, match=r"train\.compile must be true or false, got 'yes please'"):
        load_config(None, ["train.compile=yes please"])


def test_compile_without_a_compiler_fails_with_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from convirt.engine.train import resolve_accelerator

    monkeypatch.setenv("PATH", str(tmp_path))  # no C++ compiler on PATH
    monkeypatch.delenv("CXX", raising=False)
    config = load_config(None, ["train.compile=true", "train.accelerator=cpu"])
    with pytest.raises(ConfigError) as error:
        resolve_accelerator(config)
    assert str(error.value) == (
        "train.compile=true: torch.compile on CPU needs a C++ compiler on PATH (g++, clang++ or c++, or set CXX); "
        "or set train.compile=false (eager, the default)"
    )
    assert resolve_accelerator(load_config(None, ["train.accelerator=cpu"])) == "cpu"  # eager needs none
