"""The engine/objective seam: the engine trains any objective it is handed and imports none; objectives resolve
through their registry; objective parameters are typed dataclasses built by the config's own machinery."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from convirt.cli import main as cli_main
from convirt.config import Config, load_config
from convirt.engine.module import ObjectiveModule, ObjectiveParts
from convirt.errors import ConfigError
from convirt.objectives import OBJECTIVES, objective_builder
from convirt.objectives.captioning import CaptionLSTMParams, CaptionTransformerParams
from convirt.objectives.common import typed_params
from convirt.objectives.contrastive_binary import ContrastiveBinaryParams
from convirt.objectives.moco import MoCoParams
from convirt.objectives.simclr import SimCLRParams

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "convirt"

PARAMS = {
    "contrastive_binary": ContrastiveBinaryParams,
    "caption_lstm": CaptionLSTMParams,
    "caption_transformer": CaptionTransformerParams,
    "simclr": SimCLRParams,
    "moco_v2": MoCoParams,
}


def convirt_imports(file: Path) -> set[str]:
    """Every ``convirt`` name a file imports (modules, and ``module.name`` for ``from module import name``), at the
    top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # the module when it is one
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return {name for name in names if name.split(".")[0] == "convirt"}


def test_the_engine_and_the_config_import_no_objective() -> None:
    for file in sorted((SRC / "engine").glob("*.py")):
        assert not {m for m in convirt_imports(file) if m.startswith("convirt.objectives")}, file.name
    assert {m for m in convirt_imports(SRC / "config.py") if m.count(".") == 1} == {"convirt.errors"}


def test_no_import_cycle_between_modules() -> None:
    modules = {}
    for file in SRC.rglob("*.py"):
        name = ".".join(file.relative_to(SRC.parent).with_suffix("").parts).removesuffix(".__init__")
        modules[name] = file
    graph = {}
    for name, file in modules.items():
        graph[name] = {m for m in convirt_imports(file) if m in modules and m != name}

    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                pytest.fail("import cycle: " + " -> ".join([*path[path.index(other) :], node, other]))
            if other not in state:
                visit(other, [*path, node])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    assert (
        graph["convirt.config"] == {"convirt.errors"} and "convirt.engine.module" in graph["convirt.objectives.convirt"]
    )


def test_an_unknown_objective_is_one_line_before_any_work(tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    assert cli_main(["pretrain", "objective=byol", f"train.output_dir={output}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "objective 'byol' is not available" in err and "moco_v2" in err
    assert not output.exists()
    with pytest.raises(ConfigError, match="choose one of"):
        objective_builder("byol")
    assert set(OBJECTIVES) == {"convirt", *PARAMS}


@pytest.mark.parametrize("objective", sorted(PARAMS))
def test_baseline_configs_spell_out_the_parameter_defaults(objective: str) -> None:
    config = load_config(ROOT / "configs" / "baselines" / f"{objective}.yaml")
    assert config.objective == objective
    cls = PARAMS[objective]
    assert set(config.objective_params) == {f.name for f in cls.__dataclass_fields__.values()}
    assert typed_params(config, cls) == cls()


def with_params(params: str) -> Config:
    return load_config(None, [f"objective_params={params}"])


def test_objective_params_are_typed_by_the_config_machinery() -> None:
    params = typed_params(with_params("{temperature: '3e-1', lr_milestones_epochs: [6.0, 8]}"), MoCoParams)
    assert params.temperature == 0.3 and params.lr_milestones_epochs == [6, 8] and params.queue_size == 4096
    for given, message in (
        ("{temperature: warm}", r"^objective_params\.temperature must be a number, got 'warm'$"),
        ("{queue_size: 1.5}", r"^objective_params\.queue_size must be an integer, got 1\.5$"),
        ("{lr_milestones_epochs: 60}", r"^objective_params\.lr_milestones_epochs must be a list, got 60$"),
        ("{queue: 3}", r"^unknown key\(s\) \['queue'\] in section 'objective_params'; valid keys: \['bn_groups', "),
        ("{momentum: 1.0}", r"^objective_params\.momentum must be in \[0, 1\), got 1\.0$"),
    ):
        with pytest.raises(ConfigError, match=message):
            typed_params(with_params(given), MoCoParams)
    with pytest.raises(ConfigError, match=r"^objective_params must be a mapping, got 5$"):
        with_params("5")
    # dropout's default is each captioner's own; the shared checks hold for both
    assert CaptionLSTMParams().dropout == 0.5 and CaptionTransformerParams().dropout == 0.1
    with pytest.raises(ConfigError, match=r"objective_params\.target must be report or sentence"):
        typed_params(with_params("{target: words}"), CaptionLSTMParams)


# -- an objective the registry does not know, through the real engine -----------------------------------------
class ToyModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.image_encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(4, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.image_encoder(images))


class ToyModule(ObjectiveModule):
    loss_name = "toy loss"

    def __init__(self, config: Config, model: ToyModel, payload: dict[str, Any]) -> None:
        super().__init__(config, model, payload)
        self.layouts: list[bool] = []

    def batch_loss(self, batch: dict[str, Any]) -> torch.Tensor:
        images = self.image_batch(batch["images"])
        self.layouts.append(images.is_contiguous(memory_format=torch.channels_last))
        return ((self.model(images) - 1.0) ** 2).mean()


class ToyData(L.LightningDataModule):
    """The same four random images as every batch (ten per epoch) and as the one validation batch."""

    def __init__(self) -> None:
        super().__init__()
        self.batch = {"images": torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)), "skipped": []}

    def train_dataloader(self) -> DataLoader:
        return DataLoader([self.batch] * 10, batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader([self.batch], batch_size=None)


def toy_objective(config: Config) -> ObjectiveParts:
    return ObjectiveParts(ToyModule(config, ToyModel(), {"format_version": 1, "config": config.to_dict()}), ToyData())


def test_the_engine_trains_an_objective_it_is_handed(tmp_path: Path, monkeypatch) -> None:
    import convirt.engine.callbacks as callbacks
    from convirt.engine.train import pretrain

    labels: list[str] = []
    save = callbacks.atomic_savefig

    def record(figure, output):
        labels.append(figure.axes[0].get_ylabel())
        return save(figure, output)

    monkeypatch.setattr(callbacks, "atomic_savefig", record)
    config = load_config(
        None,
        [
            f"train.output_dir={tmp_path / 'toy'}",
            "train.val_every_steps=2",
            "train.max_evals=2",
            "train.checkpoint_every_steps=2",
            "train.precision=32",
            "train.accelerator=cpu",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
        ],
    )
    built: list[ObjectiveParts] = []

    def build(c: Config) -> ObjectiveParts:
        built.append(toy_objective(c))
        return built[-1]

    result = pretrain(config, build)
    module = built[0].module
    assert result.steps == 4 and result.best_val_loss is not None
    assert labels and set(labels) == {"toy loss"}  # the loss curve names the objective's loss
    assert module.layouts and all(module.layouts)  # every image batch channels-last (train.channels_last)
    assert module.model.image_encoder[0].weight.is_contiguous(memory_format=torch.channels_last)
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    assert checkpoint["convirt"] == {"format_version": 1, "config": config.to_dict()}
    assert set(checkpoint["convirt_state"]) == {
        "plateau",
        "rng_per_rank",
        "evaluations",
        "skipped_images",
        "nonfinite_steps",
    }
    assert checkpoint["convirt_state"]["evaluations"] == 2
    assert {k.split(".")[1] for k in checkpoint["state_dict"]} == {"image_encoder", "head"}
