"""The plan of a reproduction: which data the user has, the pretraining settings, what to evaluate.

A plan is a YAML file (every key optional but one pretraining source; relative paths are relative to the folder
the command runs in) read into the dataclasses below by :func:`convirt.config.from_mapping`, so unknown keys and
wrong types are errors naming ``plan.<key>``. ``key=value`` overrides (``data.rsna=/data/rsna``) change it, as
for a pretraining config. A data entry given as a plain path means ``{path: PATH}``.

.. code-block:: yaml

    output: runs/paper                       # everything goes under here
    data:                                    # any subset; one pretraining source (mimic_cxr or synthetic)
      mimic_cxr: {path: /data/mimic-cxr-jpg, reports: /data/mimic-cxr-reports}
      chexpert: /data/chexpert               # classification and CheXpert 8x200 retrieval
      rsna: /data/rsna-pneumonia
      covidx: {path: /data/covidx, fractions: [0.1, 1]}
      mura: /data/MURA-v1.1
    pretrain: {config: configs/paper.yaml, overrides: [train.devices=4, train.strategy=ddp]}
    baselines: [random, imagenet, caption_transformer, caption_lstm, contrastive_binary]
    evaluation: {protocols: [linear, finetune], fractions: [0.01, 0.1, 1], seeds: 5}
    table3: {grid: ["loss.temperature=0.01,1", "data.batch_size=16,128", "model.head=linear"]}
    figure4: {enabled: true}
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from convirt.config import from_mapping, merge_mappings, parse_overrides, read_yaml_mapping
from convirt.errors import ConfigError

# The paper's downstream datasets, in Table 1's column order, and the `convirt evaluate classify` kind of each.
PAPER_DATASETS = ("rsna", "chexpert", "covidx", "mura")
SYNTHETIC = "synthetic"
PROTOCOLS = ("linear", "finetune")
# Initialisations in Table 1's row order: those without pretraining, then the objectives pretrained on the same pairs.
IMAGE_ONLY_BASELINES = ("simclr", "moco_v2")
BASELINES = ("random", "imagenet", "caption_transformer", "caption_lstm", "contrastive_binary", *IMAGE_ONLY_BASELINES)
PRETRAINED_BASELINES = tuple(b for b in BASELINES if b not in ("random", "imagenet"))
GRID_MODES = ("one_at_a_time", "product")


@dataclass
class MimicData:
    """MIMIC-CXR-JPG (images, metadata and split tables) with its reports: the paper's pretraining pairs."""

    path: str
    reports: str | None = None  # the reports folder or mimic-cxr-reports.zip (default: inside ``path``)
    prepare_options: list[str] = field(default_factory=list)  # extra `convirt prepare mimic-cxr` flags


@dataclass
class SyntheticData:
    """The built-in synthetic radiographs (`convirt synthesize`): paired studies to pretrain on, and a separate
    labelled set (another seed) for classification and retrieval, as in `convirt demo`."""

    size: int = 4000  # paired studies for pretraining (10 % become validation pairs)
    eval_size: int = 2000  # labelled studies (70/10/20 train/val/test)
    seed: int = 0
    image_size: int = 128
    prepare_options: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)  # `convirt evaluate classify --save-manifest` dataset flags
    classify_options: list[str] = field(default_factory=list)  # extra `convirt evaluate classify` flags
    fractions: list[float] | None = None  # label fractions (default: evaluation.fractions)


@dataclass
class LabelledData:
    """One downstream dataset in its download layout (see `convirt evaluate classify`)."""

    path: str
    options: list[str] = field(default_factory=list)  # dataset flags (--val-size 2, --uncertain zeros, ...)
    classify_options: list[str] = field(default_factory=list)  # extra `convirt evaluate classify` flags
    fractions: list[float] | None = None  # label fractions (default: evaluation.fractions; COVIDx: without 1 %)


@dataclass
class DataPlan:
    mimic_cxr: MimicData | None = None
    synthetic: SyntheticData | None = None
    rsna: LabelledData | None = None
    chexpert: LabelledData | None = None
    covidx: LabelledData | None = None
    mura: LabelledData | None = None


@dataclass
class PretrainPlan:
    config: str = "configs/paper.yaml"  # ConVIRT's config (the paper's settings)
    overrides: list[str] = field(default_factory=list)  # applied to ConVIRT and to every pretrained baseline
    baseline_configs: str = "configs/baselines"  # <folder>/<objective>.yaml for each pretrained baseline
    baseline_overrides: dict[str, list[str]] = field(default_factory=dict)  # per objective, after ``overrides``


@dataclass
class EvaluationPlan:
    protocols: list[str] = field(default_factory=lambda: list(PROTOCOLS))
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    seeds: int = 5
    classify_options: list[str] = field(default_factory=list)  # extra flags for every `evaluate classify`
    retrieval_options: list[str] = field(default_factory=list)  # extra flags for every `evaluate retrieval`
    retrieval_lists: str | None = None  # CheXpert 8x200 lists folder (default: the released lists)
    image_space: str = "h_v"  # the image-image retrieval space the tables report (h_v | v)


@dataclass
class Table3Plan:
    """The hyperparameter study: pretraining runs that change the ConVIRT config, each scored like the paper's
    Table 3 (linear probe at ``fraction`` on ``dataset``; image-image and text-image P@10)."""

    grid: list[str] = field(default_factory=list)  # "section.key=v1,v2,..." (values as YAML scalars)
    mode: str = "one_at_a_time"  # one_at_a_time (the paper's: each value alone, the rest default) | product
    dataset: str | None = None  # the classification dataset (default: rsna, else synthetic)
    fraction: float = 0.01
    seeds: int | None = None  # probe seeds (default: evaluation.seeds)
    pretrain_seeds: list[int] = field(default_factory=list)  # more train.seed values: every row pretrained again


@dataclass
class Figure4Plan:
    """The loss / end-task correlation: ConVIRT keeps a checkpoint per evaluation, each scored downstream."""

    enabled: bool = False
    dataset: str | None = None  # default: table3's
    fraction: float = 0.01
    seeds: int = 1


@dataclass
class Plan:
    output: str = "runs/reproduce"
    data: DataPlan = field(default_factory=DataPlan)
    pretrain: PretrainPlan = field(default_factory=PretrainPlan)
    baselines: list[str] = field(default_factory=list)  # of BASELINES
    encoders: dict[str, str] = field(default_factory=dict)  # spec for random / imagenet (default: from the config)
    evaluation: EvaluationPlan = field(default_factory=EvaluationPlan)
    table3: Table3Plan = field(default_factory=Table3Plan)
    figure4: Figure4Plan = field(default_factory=Figure4Plan)

    @property
    def out(self) -> Path:
        return Path(self.output)

    def labelled(self) -> dict[str, LabelledData | SyntheticData]:
        """The downstream datasets the user has, in Table 1's order (synthetic last)."""
        found: dict[str, LabelledData | SyntheticData] = {
            name: getattr(self.data, name) for name in PAPER_DATASETS if getattr(self.data, name) is not None
        }
        if self.data.synthetic is not None:
            found[SYNTHETIC] = self.data.synthetic
        return found

    def fractions(self, dataset: str) -> list[float]:
        entry = self.labelled()[dataset]
        if entry.fractions is not None:
            return [float(f) for f in entry.fractions]
        fractions = [float(f) for f in self.evaluation.fractions]
        return [f for f in fractions if f > 0.01] if dataset == "covidx" else fractions  # the paper omits 1 %

    def table3_dataset(self) -> str | None:
        return _default_dataset(self, self.table3.dataset, "table3.dataset")

    def figure4_dataset(self) -> str | None:
        return _default_dataset(self, self.figure4.dataset or self.table3.dataset, "figure4.dataset")

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _default_dataset(plan: Plan, chosen: str | None, key: str) -> str | None:
    available = plan.labelled()
    if chosen is not None:
        if chosen not in available:
            raise ConfigError(f"plan {key}: {chosen!r} is not among the datasets given ({sorted(available) or 'none'})")
        return chosen
    return next((name for name in ("rsna", SYNTHETIC, *PAPER_DATASETS) if name in available), None)


def _shorthand(data: Any) -> Any:
    """``rsna: /data/rsna`` means ``rsna: {path: /data/rsna}``."""
    if not isinstance(data, dict):
        return data
    return {k: ({"path": v} if isinstance(v, (str, os.PathLike)) else v) for k, v in data.items()}


def _shorthand_data(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "data": _shorthand(data["data"])} if isinstance(data.get("data"), dict) else data


def plan_from_dict(data: dict[str, Any]) -> Plan:
    if not isinstance(data, dict):
        raise ConfigError(f"a plan must be a mapping, got {data!r}")
    plan = from_mapping(Plan, _shorthand_data(data), "plan", noun="plan key")
    validate_plan(plan)
    return plan


def load_plan(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> Plan:
    """Read a plan file (or start from the defaults) and apply ``key=value`` overrides."""
    data = _shorthand_data(read_yaml_mapping(path, "plan file"))
    return plan_from_dict(merge_mappings(data, _shorthand_data(parse_overrides(overrides or []))))


def _exists(path: str | None, key: str) -> None:
    if path is not None and not Path(path).expanduser().exists():
        raise ConfigError(f"plan {key}: {path} does not exist")


def validate_plan(plan: Plan) -> None:
    """Checks across keys, with messages naming ``plan.<key>``: one pretraining source, known baselines and
    protocols, data paths that exist."""
    d = plan.data
    if (d.mimic_cxr is None) == (d.synthetic is None):
        raise ConfigError(
            "plan data: give exactly one pretraining source, data.mimic_cxr (MIMIC-CXR-JPG with its reports) or "
            "data.synthetic (the built-in synthetic pairs)"
        )
    if d.mimic_cxr is not None:
        _exists(d.mimic_cxr.path, "data.mimic_cxr.path")
        _exists(d.mimic_cxr.reports, "data.mimic_cxr.reports")
    for name in PAPER_DATASETS:
        entry = getattr(d, name)
        if entry is not None:
            _exists(entry.path, f"data.{name}.path")
    _exists(plan.evaluation.retrieval_lists, "evaluation.retrieval_lists")
    unknown = sorted(set(plan.baselines) - set(BASELINES))
    if unknown:
        raise ConfigError(f"plan baselines: unknown {unknown}; choose from {list(BASELINES)}")
    unknown = sorted(set(plan.evaluation.protocols) - set(PROTOCOLS))
    if unknown:
        raise ConfigError(f"plan evaluation.protocols: unknown {unknown}; use {list(PROTOCOLS)}")
    unknown = sorted(set(plan.encoders) - {"random", "imagenet"})
    if unknown:
        raise ConfigError(f"plan encoders: only random and imagenet can be set, not {unknown}")
    unknown = sorted(set(plan.pretrain.baseline_overrides) - set(PRETRAINED_BASELINES))
    if unknown:
        raise ConfigError(f"plan pretrain.baseline_overrides: unknown objective(s) {unknown}")
    if plan.evaluation.image_space not in ("h_v", "v"):
        raise ConfigError(f"plan evaluation.image_space {plan.evaluation.image_space!r}: use h_v or v")
    if plan.evaluation.seeds < 1:
        raise ConfigError("plan evaluation.seeds must be at least 1")
    if plan.table3.mode not in GRID_MODES:
        raise ConfigError(f"plan table3.mode {plan.table3.mode!r}: use one of {list(GRID_MODES)}")
    for fraction in [*plan.evaluation.fractions, plan.table3.fraction, plan.figure4.fraction]:
        if not 0 < fraction <= 1:
            raise ConfigError(f"plan: label fractions must be in (0, 1], got {fraction}")
    plan.table3_dataset()
    plan.figure4_dataset()
