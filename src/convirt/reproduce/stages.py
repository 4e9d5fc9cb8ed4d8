"""The stage graph of a plan: every stage one `convirt ...` command line with its inputs, outputs and the stages
it runs after, and the test of whether it is already done.

Layout under the plan's ``output`` folder::

    plan.yaml                        the resolved plan (what `--stage NAME` jobs read)
    stages/<stage>.json              the record of each finished stage (its command, when, how long)
    logs/<stage>.log                 each stage's output
    data/synthetic/{pairs,eval}/     `convirt synthesize` (synthetic plans)
    data/prepared/                   `convirt prepare`: the paired manifest for pretraining
    data/labelled/<dataset>.csv      each downstream dataset's labelled manifest, its splits frozen
    pretrain/convirt/, pretrain/<baseline>/, pretrain/grid/<run>/      `convirt pretrain` runs
    classify/<dataset>-<protocol>/   Table 1: `convirt evaluate classify` (runs.csv, summary.md, ...)
    features/<dataset>/              feature caches shared by the linear probes of one dataset
    retrieval/<name>/                Table 2: `convirt evaluate retrieval` (chexpert-8x200 and/or synthetic)
    table3/<run>/{classify,retrieval}/                                  Table 3 scores of each grid run
    figure4/                         `convirt evaluate trajectory` of ConVIRT's kept checkpoints
    results/paper-tables.md, results/paper-tables.csv                   the tables, ours beside the paper's

A stage is **done** when its outputs exist, its record names the same command and no input is newer than its
outputs; a pretraining run is done when its ``summary.json`` counts every planned step and its ``config.yaml`` is
the planned config (so a run started by hand counts too). Every command resumes on its own (pretraining from
``last.ckpt``, classification run by run, trajectories checkpoint by checkpoint), so a stage killed half-way
continues where it stopped when it runs again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from convirt.config import Config, config_from_dict, load_config
from convirt.encoders.spec import initial_weights_spec
from convirt.errors import ConfigError
from convirt.reproduce.grid import GridRun, expand_grid, parse_grid, with_replicates
from convirt.reproduce.plan import (
    PRETRAINED_BASELINES,
    SYNTHETIC,
    LabelledData,
    Plan,
)

# Display names of the initialisations, in the paper's words (Tables 1, 2 and 4).
INIT_NAMES = {
    "random": "Random Init.",
    "imagenet": "ImageNet Init.",
    "caption_transformer": "Caption-Transformer",
    "caption_lstm": "Caption-LSTM",
    "contrastive_binary": "Contrastive-Binary",
    "simclr": "SimCLR",
    "moco_v2": "MoCo v2",
    "convirt": "ConVIRT",
}
SYNTHETIC_EVAL_SEED_OFFSET = 1_000_003  # the labelled set's seed, as `convirt demo` draws it
PAPER_RETRIEVAL = "chexpert-8x200"
RETRIEVAL_KS = ("5", "10", "50", "100")


@dataclass
class Stage:
    """One step of the reproduction: a `convirt` command line and what it reads and writes."""

    name: str
    kind: str  # synthesize | labelled | prepare | pretrain | classify | retrieval | trajectory | tables
    argv: list[str]  # starts with "convirt"
    outputs: list[Path]  # written last by the command: their presence means it finished
    inputs: list[Path] = field(default_factory=list)  # files of earlier stages it reads
    after: list[str] = field(default_factory=list)  # stages that must be done first
    config: Config | None = None  # pretraining stages: the run's config
    summary: str = ""  # one line for the dry run

    @property
    def command(self) -> str:
        import shlex

        return shlex.join(self.argv)


@dataclass
class StageGraph:
    plan: Plan
    stages: list[Stage]
    grid: list[GridRun]
    config: Config  # ConVIRT's pretraining config

    def __getitem__(self, name: str) -> Stage:
        for stage in self.stages:
            if stage.name == name:
                return stage
        raise KeyError(name)

    def names(self) -> list[str]:
        return [s.name for s in self.stages]


# ---------------------------------------------------------------------------------------------------------------
# Paths


def plan_file(plan: Plan) -> Path:
    return plan.out / "plan.yaml"


def record_file(plan: Plan, stage: str) -> Path:
    return plan.out / "stages" / f"{stage}.json"


def log_file(plan: Plan, stage: str) -> Path:
    return plan.out / "logs" / f"{stage}.log"


def tables_file(plan: Plan) -> Path:
    return plan.out / "results" / "paper-tables.md"


def prepared_manifest(plan: Plan) -> Path:
    return plan.out / "data" / "prepared" / "manifest.csv"


def synthetic_dir(plan: Plan, part: str) -> Path:
    return plan.out / "data" / "synthetic" / part


def labelled_manifest(plan: Plan, dataset: str) -> Path:
    return plan.out / "data" / "labelled" / f"{dataset}.csv"


def pretrain_dir(plan: Plan, objective: str = "convirt") -> Path:
    return plan.out / "pretrain" / objective


def grid_dir(plan: Plan, run: GridRun) -> Path:
    return plan.out / "pretrain" / "grid" / run.name


def best_checkpoint(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "best.ckpt"


def classify_dir(plan: Plan, dataset: str, protocol: str) -> Path:
    return plan.out / "classify" / f"{dataset}-{protocol}"


def retrieval_dir(plan: Plan, name: str) -> Path:
    return plan.out / "retrieval" / name


def table3_dir(plan: Plan, run: str, part: str) -> Path:
    return plan.out / "table3" / run / part


def figure4_dir(plan: Plan) -> Path:
    return plan.out / "figure4"


# ---------------------------------------------------------------------------------------------------------------
# Building the graph


def _overrides(config_overrides: Sequence[str], run_dir: Path, manifest: Path) -> list[str]:
    return [f"data.manifest={manifest}", f"train.output_dir={run_dir}", *config_overrides]


def _pretrain_stage(name: str, config_path: str, overrides: list[str], after: list[str], summary: str,
                    manifest: Path) -> Stage:  # fmt: skip
    config = load_config(config_path, overrides)
    run_dir = Path(config.train.output_dir)
    return Stage(
        name, "pretrain", ["convirt", "pretrain", "--config", config_path, *overrides],
        outputs=[run_dir / "summary.json", best_checkpoint(run_dir)], inputs=[manifest], after=after,
        config=config, summary=summary,
    )  # fmt: skip


def _labelled_spec(plan: Plan, dataset: str) -> str:
    if dataset == SYNTHETIC:
        return f"manifest:{synthetic_dir(plan, 'eval') / 'labels.csv'}"
    entry = plan.labelled()[dataset]
    assert isinstance(entry, LabelledData)
    return f"{dataset}:{entry.path}"


def _fractions(values: Sequence[float]) -> str:
    return ",".join(f"{f:g}" for f in values)


def _encoders(pairs: Sequence[tuple[str, str]], option: str, name_option: str) -> list[str]:
    words: list[str] = []
    for spec, name in pairs:
        words += [option, spec, name_option, name]
    return words


def retrieval_sources(plan: Plan) -> list[str]:
    """The retrieval evaluations the data allows: CheXpert 8x200 (Table 2), the synthetic test split; the first is
    Table 3's and Figure 4's."""
    names = []
    if plan.data.chexpert is not None:
        names.append(PAPER_RETRIEVAL)
    if plan.data.synthetic is not None:
        names.append(SYNTHETIC)
    return names


def _retrieval_data_args(plan: Plan, name: str) -> list[str]:
    if name == PAPER_RETRIEVAL:
        assert plan.data.chexpert is not None
        lists = ["--lists", plan.evaluation.retrieval_lists] if plan.evaluation.retrieval_lists else []
        return ["--chexpert-root", plan.data.chexpert.path, *lists]
    eval_dir = synthetic_dir(plan, "eval")
    return ["--dataset", f"manifest:{eval_dir / 'labels.csv'}", "--split", "test",
            "--prompts", str(eval_dir / "text_queries.csv")]  # fmt: skip


def build_stages(plan: Plan) -> StageGraph:
    """Every stage of the plan, in an order that runs each after the stages it needs."""
    stages: list[Stage] = []
    p = plan.pretrain
    base_overrides = list(p.overrides)
    keep = ["train.keep_checkpoints=every_eval"] if plan.figure4.enabled else []

    # 1. data: synthetic generation, labelled manifests (splits frozen once), the paired manifest
    manifest = prepared_manifest(plan)
    synthetic = plan.data.synthetic
    if synthetic is not None:
        eval_seed = synthetic.seed + SYNTHETIC_EVAL_SEED_OFFSET
        for part, size, seed in (("pairs", synthetic.size, synthetic.seed), ("eval", synthetic.eval_size, eval_seed)):
            folder = synthetic_dir(plan, part)
            stages.append(Stage(
                f"synthesize-{part}", "synthesize",
                ["convirt", "synthesize", "--out", str(folder), "--size", str(size), "--seed", str(seed),
                 "--image-size", str(synthetic.image_size)],
                outputs=[folder / "pairs.csv", folder / "labels.csv", folder / "text_queries.csv",
                         folder / "synthetic.json"],
                summary=f"synthetic {'pretraining pairs' if part == 'pairs' else 'labelled evaluation set'}",
            ))  # fmt: skip
    for dataset, entry in plan.labelled().items():
        target = labelled_manifest(plan, dataset)
        stages.append(Stage(
            f"labelled-{dataset}", "labelled",
            ["convirt", "evaluate", "classify", "--dataset", _labelled_spec(plan, dataset), *entry.options,
             "--save-manifest", str(target)],
            outputs=[target, Path(f"{target}.task.json")],
            after=["synthesize-eval"] if dataset == SYNTHETIC else [],
            summary=f"{dataset}: labelled manifest with its train/val/test split",
        ))  # fmt: skip
    if synthetic is not None:
        prepare = ["convirt", "prepare", "csv", "--input", str(synthetic_dir(plan, "pairs")), "--table", "pairs.csv",
                   "--val-size", "0.1", "--seed", str(synthetic.seed), "--image-size", str(synthetic.image_size),
                   *synthetic.prepare_options]  # fmt: skip
        prepare_after = ["synthesize-pairs"]
    else:
        mimic = plan.data.mimic_cxr
        assert mimic is not None
        reports = ["--reports", mimic.reports] if mimic.reports else []
        prepare = ["convirt", "prepare", "mimic-cxr", "--input", mimic.path, *reports, *mimic.prepare_options]
        prepare_after = []
    prepare += ["--output", str(manifest.parent), "--no-progress"]
    stages.append(
        Stage(
            "prepare",
            "prepare",
            prepare,
            outputs=[manifest, manifest.parent / "prepare_report.json"],
            after=prepare_after,
            summary="the paired manifest (sections, sentences, image cache, split)",
        )
    )

    # 2. pretraining: ConVIRT, then each pretrained baseline on the same pairs
    convirt_stage = _pretrain_stage(
        "pretrain", p.config, _overrides([*base_overrides, *keep], pretrain_dir(plan), manifest), ["prepare"],
        "ConVIRT" + (", a checkpoint kept per evaluation (Figure 4)" if keep else ""), manifest,
    )  # fmt: skip
    config = convirt_stage.config
    assert config is not None
    stages.append(convirt_stage)
    pretrained = [b for b in plan.baselines if b in PRETRAINED_BASELINES]
    for objective in pretrained:
        path = str(Path(p.baseline_configs) / f"{objective}.yaml")
        if not Path(path).is_file():
            raise ConfigError(f"plan baselines: {objective} needs its config {path} (plan pretrain.baseline_configs)")
        overrides = _overrides([*base_overrides, *p.baseline_overrides.get(objective, [])],
                               pretrain_dir(plan, objective), manifest)  # fmt: skip
        stages.append(_pretrain_stage(f"pretrain-{objective}", path, overrides, ["prepare"],
                                      f"baseline {INIT_NAMES[objective]}", manifest))  # fmt: skip

    # 3. Table 1: every downstream dataset x protocol, all initialisations in one command
    architecture = config.model.image_encoder
    random_spec = plan.encoders.get("random", f"random:{architecture}")
    imagenet_spec = plan.encoders.get("imagenet") or initial_weights_spec(
        architecture, config.model.image_weights if config.model.image_weights not in (None, "none") else "imagenet"
    )
    checkpoints = {"convirt": best_checkpoint(pretrain_dir(plan))}
    checkpoints.update({b: best_checkpoint(pretrain_dir(plan, b)) for b in pretrained})
    table1: list[tuple[str, str]] = []  # (spec, name) in the paper's row order
    for init in ("random", "imagenet", *PRETRAINED_BASELINES, "convirt"):
        if init == "random" and "random" in plan.baselines:
            table1.append((random_spec, INIT_NAMES[init]))
        elif init == "imagenet" and "imagenet" in plan.baselines and imagenet_spec is not None:
            table1.append((imagenet_spec, INIT_NAMES[init]))
        elif init in checkpoints:
            table1.append((str(checkpoints[init]), INIT_NAMES[init]))
    pretrain_names = ["pretrain", *(f"pretrain-{b}" for b in pretrained)]
    checkpoint_files = list(checkpoints.values())
    for dataset, entry in plan.labelled().items():
        for protocol in plan.evaluation.protocols:
            stages.append(_classify_stage(
                plan, f"classify-{dataset}-{protocol}", dataset, protocol, plan.fractions(dataset),
                plan.evaluation.seeds, table1, classify_dir(plan, dataset, protocol), checkpoint_files, pretrain_names,
                entry.classify_options, f"Table 1 ({'a' if protocol == 'linear' else 'b'}): {dataset} {protocol}",
            ))  # fmt: skip

    # 4. Table 2: zero-shot retrieval (CheXpert 8x200 and/or the synthetic test split)
    retrieval_encoders = [(str(checkpoints["convirt"]), INIT_NAMES["convirt"])]
    if "imagenet" in plan.baselines and imagenet_spec is not None:
        retrieval_encoders.append((imagenet_spec, INIT_NAMES["imagenet"]))
    retrieval_encoders += [(str(checkpoints[b]), INIT_NAMES[b]) for b in pretrained]
    # The paper branch's fine-tuned upper bound ("ConVIRT + CheXpert Supervised", a CheXpert fine-tune saved with
    # --save-encoder) joins retrieval_encoders here as one more (spec, name) pair once that option exists.
    for name in retrieval_sources(plan):
        stages.append(_retrieval_stage(plan, f"retrieval-{name}", name, retrieval_encoders, retrieval_dir(plan, name),
                                       checkpoint_files, pretrain_names, "Table 2: zero-shot retrieval"))  # fmt: skip

    # 5. Table 3: the grid's pretraining runs, each scored on the Table 3 tasks
    grid = expand_grid(parse_grid(plan.table3.grid, p.config, base_overrides), config, plan.table3.mode)
    grid = with_replicates(grid, config, plan.table3.pretrain_seeds)
    table3_data = plan.table3_dataset()
    table3_seeds = plan.table3.seeds or plan.evaluation.seeds
    rows = [("default", checkpoints["convirt"], "pretrain")]
    for run in grid:
        overrides = _overrides([*base_overrides, *run.overrides], grid_dir(plan, run), manifest)
        stages.append(_pretrain_stage(f"table3-pretrain-{run.name}", p.config, overrides, ["prepare"],
                                      f"Table 3: {run.label}", manifest))  # fmt: skip
        rows.append((run.name, best_checkpoint(grid_dir(plan, run)), f"table3-pretrain-{run.name}"))
    if plan.table3.grid or plan.table3.pretrain_seeds:
        for run_name, checkpoint, pretrain_stage in rows:
            if table3_data is not None:
                stages.append(_classify_stage(
                    plan, f"table3-classify-{run_name}", table3_data, "linear", [plan.table3.fraction], table3_seeds,
                    [(str(checkpoint), INIT_NAMES["convirt"])], table3_dir(plan, run_name, "classify"), [checkpoint],
                    [pretrain_stage], plan.labelled()[table3_data].classify_options,
                    f"Table 3 ({run_name}): {table3_data} linear, {plan.table3.fraction * 100:g} % of the labels",
                ))  # fmt: skip
            if run_name != "default":  # the default run's retrieval is Table 2's
                for name in retrieval_sources(plan)[:1]:
                    stages.append(_retrieval_stage(
                        plan, f"table3-retrieval-{run_name}", name, [(str(checkpoint), INIT_NAMES["convirt"])],
                        table3_dir(plan, run_name, "retrieval"), [checkpoint], [pretrain_stage],
                        f"Table 3 ({run_name}): retrieval",
                    ))  # fmt: skip

    # 6. Figure 4: every kept ConVIRT checkpoint scored downstream
    if plan.figure4.enabled:
        stages.append(_figure4_stage(plan, checkpoints["convirt"]))

    # 7. the tables
    inputs = sorted({o for s in stages if s.kind in ("classify", "retrieval", "trajectory") for o in s.outputs})
    stages.append(Stage(
        "tables", "tables", ["convirt", "reproduce", "--plan", str(plan_file(plan)), "--stage", "tables"],
        outputs=[tables_file(plan), tables_file(plan).with_suffix(".csv")], inputs=inputs,
        after=[s.name for s in stages if s.kind in ("classify", "retrieval", "trajectory")],
        summary="Tables 1-4 in the paper's layout, ours beside the paper's",
    ))  # fmt: skip
    _check_graph(stages)
    return StageGraph(plan, stages, grid, config)


def _classify_stage(plan: Plan, name: str, dataset: str, protocol: str, fractions: Sequence[float], seeds: int,
                    encoders: Sequence[tuple[str, str]], output: Path, checkpoints: Sequence[Path],
                    pretrain_names: Sequence[str], options: Sequence[str], summary: str) -> Stage:  # fmt: skip
    manifest = labelled_manifest(plan, dataset)
    argv = ["convirt", "evaluate", "classify", "--dataset", f"manifest:{manifest}",
            *_encoders(encoders, "--encoder", "--name"), "--protocol", protocol,
            "--fractions", _fractions(fractions), "--seeds", str(seeds), "--output", str(output)]  # fmt: skip
    if protocol == "linear":  # one feature cache per dataset: each frozen encoder is encoded once for every table
        argv += ["--cache-dir", str(plan.out / "features" / dataset)]
    argv += [*plan.evaluation.classify_options, *options]
    used = [c for c in checkpoints if str(c) in {spec for spec, _ in encoders}]
    return Stage(
        name,
        "classify",
        argv,
        outputs=[output / "metrics.json", output / "runs.csv"],
        inputs=[manifest, *used],
        after=[f"labelled-{dataset}", *pretrain_names],
        summary=summary,
    )


def _retrieval_stage(plan: Plan, name: str, source: str, encoders: Sequence[tuple[str, str]], output: Path,
                     checkpoints: Sequence[Path], pretrain_names: Sequence[str], summary: str) -> Stage:  # fmt: skip
    argv = ["convirt", "evaluate", "retrieval", *_retrieval_data_args(plan, source),
            *_encoders(encoders, "--encoder", "--label"), "--output", str(output),
            *plan.evaluation.retrieval_options]  # fmt: skip
    used = [c for c in checkpoints if str(c) in {spec for spec, _ in encoders}]
    after = [*pretrain_names, *(["synthesize-eval"] if source == SYNTHETIC else [])]
    return Stage(
        name,
        "retrieval",
        argv,
        outputs=[output / "metrics.json", output / "retrieval.csv"],
        inputs=used,
        after=after,
        summary=f"{summary} ({source})",
    )


def _figure4_stage(plan: Plan, checkpoint: Path) -> Stage:
    run_dir = checkpoint.parent.parent
    argv = ["convirt", "evaluate", "trajectory", str(run_dir), "--output", str(figure4_dir(plan))]
    after = ["pretrain"]
    inputs = [checkpoint]
    dataset = plan.figure4_dataset()
    if dataset is not None:
        manifest = labelled_manifest(plan, dataset)
        argv += ["--classify", f"manifest:{manifest}", "--fraction", f"{plan.figure4.fraction:g}",
                 "--seeds", str(plan.figure4.seeds), "--cache-dir", str(plan.out / "features" / dataset),
                 *plan.evaluation.classify_options, *plan.labelled()[dataset].classify_options]  # fmt: skip
        after.append(f"labelled-{dataset}")
        inputs.append(manifest)
    sources = retrieval_sources(plan)
    if sources:
        argv += _retrieval_data_args(plan, sources[0])
        argv += ["--space", plan.evaluation.image_space]
        after += ["synthesize-eval"] if sources[0] == SYNTHETIC else []
    out = figure4_dir(plan)
    return Stage(
        "figure4",
        "trajectory",
        argv,
        outputs=[out / "trajectory.csv", out / "figure4.png"],
        inputs=inputs,
        after=after,
        summary="Figure 4: every kept checkpoint scored downstream",
    )


def _check_graph(stages: list[Stage]) -> None:
    seen: set[str] = set()
    for stage in stages:
        missing = [a for a in stage.after if a not in seen]
        if missing:  # a bug, not a user error: every stage is listed after the ones it needs
            raise AssertionError(f"stage {stage.name} listed before {missing}")
        seen.add(stage.name)


# ---------------------------------------------------------------------------------------------------------------
# Done or not


def _mtime(path: Path) -> float:
    return path.stat().st_mtime


# Settings that do not change what a pretraining run computes: a finished run with other values still counts.
RESULT_NEUTRAL = frozenset(
    {"train.resume", "train.progress_bar", "train.tensorboard", "train.log_every_steps", "data.num_workers"}
)


def _flat(values: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict) and key != "objective_params":
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _pretrain_done(stage: Stage) -> tuple[bool, str]:
    assert stage.config is not None
    run_dir = Path(stage.config.train.output_dir)
    summary_file, config_file = run_dir / "summary.json", run_dir / "config.yaml"
    if not summary_file.is_file() or not config_file.is_file():
        return False, "not started" if not run_dir.exists() else "not finished (resumes from last.ckpt)"
    try:
        summary = json.loads(summary_file.read_text())
        stored = config_from_dict(yaml.safe_load(config_file.read_text())).to_dict()
    except (ValueError, ConfigError, yaml.YAMLError):
        return False, f"{run_dir} holds an unreadable summary or config"
    steps, planned = int(summary.get("steps", 0)), stage.config.max_steps
    if steps < planned:
        return False, f"not finished ({steps} of {planned} steps; resumes from last.ckpt)"
    planned_values, finished_values = _flat(stage.config.to_dict()), _flat(stored)
    changed = sorted(k for k in {*planned_values, *finished_values} - RESULT_NEUTRAL
                     if planned_values.get(k) != finished_values.get(k))  # fmt: skip
    if changed:
        return False, f"finished with another config ({', '.join(changed[:4])} differ): give it another output folder"
    if not best_checkpoint(run_dir).is_file():
        return False, f"finished, but {best_checkpoint(run_dir)} is missing"
    return True, f"done ({steps} steps)"


def stage_status(plan: Plan, stage: Stage) -> tuple[bool, str]:
    """(done?, why) for one stage (see the module docstring)."""
    if stage.kind == "pretrain":
        return _pretrain_done(stage)
    missing = [o for o in stage.outputs if not o.is_file()]
    if missing:
        return False, "to run" if len(missing) == len(stage.outputs) else f"incomplete ({missing[0].name} missing)"
    record = record_file(plan, stage.name)
    if not record.is_file():
        return False, "outputs present but no record of this command: runs again (it reuses what it can)"
    try:
        recorded = json.loads(record.read_text()).get("command")
    except ValueError:
        recorded = None
    if recorded != stage.argv:
        return False, "the planned command changed since it ran: runs again (it reuses what it can)"
    oldest = min(_mtime(o) for o in stage.outputs)
    newer = [i for i in stage.inputs if i.is_file() and _mtime(i) > oldest]
    if newer:
        return False, f"{newer[0]} is newer than its outputs: runs again"
    return True, "done"


def write_record(plan: Plan, stage: Stage, seconds: float) -> None:
    from datetime import datetime, timezone

    from convirt.fileio import atomic_write_json

    atomic_write_json(
        record_file(plan, stage.name),
        {
            "stage": stage.name,
            "command": stage.argv,
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "cwd": os.getcwd(),
        },
    )
