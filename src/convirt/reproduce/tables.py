"""``results/paper-tables.md`` (and ``.csv``): the paper's Tables 1 (a) and (b), 2, 3 and 4 in its layout, our
number beside the paper's in every cell, from the outputs the stages wrote.

Every cell reads ``ours (paper)``: ours as mean ± sample standard deviation over seeds (Table 1, Table 3's
classification column) or a single run's value (retrieval), the paper's in parentheses. A row the plan does not
include reads ``not run``; a dataset the user did not give, ``no data``; a planned result not written yet,
``pending``; a number the paper does not report, ``–``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.evaluation.classification.report import summarize
from convirt.evaluation.paper_numbers import CLASSIFICATION, HYPERPARAMETERS, RETRIEVAL, RETRIEVAL_RANDOM
from convirt.fileio import atomic_write_text
from convirt.reproduce.grid import REPLICATE_KEY, GridRun
from convirt.reproduce.plan import IMAGE_ONLY_BASELINES, PAPER_DATASETS, SYNTHETIC
from convirt.reproduce.stages import (
    INIT_NAMES,
    PAPER_RETRIEVAL,
    StageGraph,
    classify_dir,
    figure4_dir,
    retrieval_dir,
    retrieval_sources,
    table3_dir,
    tables_file,
)

TABLE1_ROWS = ("random", "imagenet", "caption_transformer", "caption_lstm", "contrastive_binary", "convirt")
DATASET_TITLES = {"rsna": "RSNA (AUC)", "chexpert": "CheXpert (AUC)", "covidx": "COVIDx (Accu.)", "mura": "MURA (AUC)"}
PAPER_FRACTIONS = {
    "rsna": (0.01, 0.1, 1.0),
    "chexpert": (0.01, 0.1, 1.0),
    "covidx": (0.1, 1.0),
    "mura": (0.01, 0.1, 1.0),
}
TABLE2_ROWS = ("imagenet", "caption_transformer", "caption_lstm", "contrastive_binary", "convirt")
UPPER_BOUND = "ConVIRT + CheXpert Supervised"
RETRIEVAL_KS = (5, 10, 50)
TASKS = ("image_image", "text_image")


@dataclass
class Value:
    """One of our numbers: mean, sample std (NaN for one value) and how many values it summarises."""

    mean: float
    std: float = math.nan
    n: int = 1

    def text(self) -> str:
        if math.isnan(self.mean):
            return "n/a"
        return f"{self.mean:.1f}" if math.isnan(self.std) else f"{self.mean:.1f} ± {self.std:.1f}"


def _paper(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def cell(ours: Value | str, paper: float | None, with_paper: bool = True) -> str:
    text = ours if isinstance(ours, str) else ours.text()
    return f"{text} ({_paper(paper)})" if with_paper else text


class Tables:
    """Collects rows (for the CSV) while rendering the Markdown."""

    def __init__(self, graph: StageGraph) -> None:
        self.graph = graph
        self.plan = graph.plan
        self.records: list[dict] = []
        self.stage_names = set(graph.names())

    def record(self, table: str, row: str, column: str, ours: Value | str, paper: float | None) -> None:
        value = ours if isinstance(ours, Value) else None
        self.records.append({
            "table": table, "row": row, "column": column,
            "ours": None if value is None else round(value.mean, 4),
            "ours_std": None if value is None or math.isnan(value.std) else round(value.std, 4),
            "ours_n": None if value is None else value.n,
            "status": "ok" if value is not None else ours, "paper": paper,
        })  # fmt: skip

    # -- reading results ----------------------------------------------------------------------------------------
    def classification(self, dataset: str, protocol: str) -> pd.DataFrame | None:
        """Mean/std/count per init and fraction of a finished Table 1 evaluation (None: not written yet)."""
        folder = classify_dir(self.plan, dataset, protocol)
        return _summary(folder)

    def retrieval(self, folder: Path) -> pd.DataFrame | None:
        if not (folder / "metrics.json").is_file():
            return None
        frame = pd.read_csv(folder / "retrieval.csv")
        return frame[frame["category"] == "mean"]


def _summary(folder: Path) -> pd.DataFrame | None:
    if not (folder / "metrics.json").is_file():
        return None
    return summarize(pd.read_csv(folder / "runs.csv", dtype={"run_key": str}))


def _classification_value(summary: pd.DataFrame | None, init: str, fraction: float) -> Value | str:
    if summary is None:
        return "pending"
    # by the name the stages give each encoder: an ImageNet row given as NAME=FILE is classified as init "custom"
    rows = summary[(summary["encoder"] == INIT_NAMES[init]) & np.isclose(summary["fraction"], fraction)]
    if rows.empty:
        return "not run"
    row = rows.iloc[0]
    return Value(float(row["mean"]), float(row["std"]), int(row["runs"]))


def _retrieval_value(frame: pd.DataFrame | None, label: str, task: str, space: str, k: int) -> Value | str:
    if frame is None:
        return "pending"
    rows = frame[(frame["encoder"] == label) & (frame["task"] == task) & (frame["k"] == k)]
    for wanted in (space, "h_v") if task == "image_image" else ():  # image-only encoders have h_v alone,
        if (rows["space"] == wanted).any():  # the class prior no space at all
            rows = rows[rows["space"] == wanted]
            break
    if rows.empty:
        return "not run"
    return Value(float(rows["precision_percent"].iloc[0]))


# ---------------------------------------------------------------------------------------------------------------
# Table 1


def _table1(t: Tables, protocol: str) -> list[str]:
    plan = t.plan
    letter = "a" if protocol == "linear" else "b"
    title = "linear classification" if protocol == "linear" else "fine-tuning"
    lines = [f"## Table 1 ({letter}): {title}", ""]
    if protocol not in plan.evaluation.protocols:
        return [*lines, f"Not run (the plan's evaluation.protocols do not include {protocol}).", ""]
    header, columns = ["Method"], []
    for dataset in PAPER_DATASETS:
        for fraction in PAPER_FRACTIONS[dataset]:
            header.append(f"{DATASET_TITLES[dataset]} {_fraction(fraction)}")
            columns.append((dataset, fraction))
    lines += [_row(header), _rule(len(header))]
    summaries = {d: t.classification(d, protocol) for d in PAPER_DATASETS if d in plan.labelled()}
    extra = [b for b in IMAGE_ONLY_BASELINES if b in plan.baselines]
    for init in (*TABLE1_ROWS, *extra):
        ran = init == "convirt" or init in plan.baselines
        label = INIT_NAMES[init] + ("" if ran else " (not run)") + (" (Table 4 baseline)" if init in extra else "")
        cells = [label]
        for dataset, fraction in columns:
            paper = CLASSIFICATION.get((dataset, protocol, init), {}).get(fraction)
            if dataset not in summaries:
                ours: Value | str = "no data"
            elif not ran:
                ours = "not run"
            else:
                ours = _classification_value(summaries[dataset], init, fraction)
            if dataset in summaries and ran and not any(math.isclose(fraction, f) for f in plan.fractions(dataset)):
                ours = "not run"
            t.record(f"1{letter}", INIT_NAMES[init], f"{dataset} {_fraction(fraction)}", ours, paper)
            cells.append(cell(ours, paper))
        lines.append(_row(cells))
    seeds = plan.evaluation.seeds
    lines += [
        "",
        f"Each cell: ours, mean ± sample std over {seeds} seed(s), each seed its own label subset (the paper's number "
        f"in parentheses; it averages 5). Per-run rows: `classify/<dataset>-{protocol}/runs.csv`.",
        "",
    ]
    return lines


def _other_classification(t: Tables) -> list[str]:
    """Table 1's layout for a downstream set that is not one of the paper's (the synthetic labels)."""
    plan = t.plan
    if SYNTHETIC not in plan.labelled():
        return []
    fractions = plan.fractions(SYNTHETIC)
    lines = ["## Table 1 layout on the synthetic labelled set (not the paper's data: no paper numbers)", ""]
    header = ["Method", *(f"{p} {_fraction(f)}" for p in plan.evaluation.protocols for f in fractions)]
    lines += [_row(header), _rule(len(header))]
    inits = [i for i in TABLE1_ROWS if i == "convirt" or i in plan.baselines]
    inits += [b for b in IMAGE_ONLY_BASELINES if b in plan.baselines]
    summaries = {p: t.classification(SYNTHETIC, p) for p in plan.evaluation.protocols}
    for init in inits:
        cells = [INIT_NAMES[init]]
        for protocol in plan.evaluation.protocols:
            for fraction in fractions:
                ours = _classification_value(summaries[protocol], init, fraction)
                t.record("1-synthetic", INIT_NAMES[init], f"{protocol} {_fraction(fraction)}", ours, None)
                cells.append(cell(ours, None, with_paper=False))
        lines.append(_row(cells))
    return [*lines, "", "Mean AUC over the 8 synthetic findings (test split), mean ± sample std over seeds.", ""]


# ---------------------------------------------------------------------------------------------------------------
# Table 2


def _table2(t: Tables, source: str) -> list[str]:
    plan = t.plan
    space = plan.evaluation.image_space
    frame = t.retrieval(retrieval_dir(plan, source))
    if source == PAPER_RETRIEVAL:
        lines = ["## Table 2: zero-shot retrieval, CheXpert 8x200", ""]
    else:
        lines = ["## Table 2 layout on the synthetic test split (not the paper's data: the parenthesised numbers are "
                 "CheXpert 8x200's, for orientation only)", ""]  # fmt: skip
    header = ["Method", *(f"{'Image-image' if task == TASKS[0] else 'Text-image'} P@{k}" for task in TASKS
                          for k in RETRIEVAL_KS)]  # fmt: skip
    lines += [_row(header), _rule(len(header))]
    prior = [_retrieval_value(frame, "random (class prior)", task, "h_v" if task == TASKS[0] else "v", k)
             for task in TASKS for k in RETRIEVAL_KS]  # fmt: skip
    lines.append(_row(["Random", *(cell(v, RETRIEVAL_RANDOM) for v in prior)]))
    for v, (task, k) in zip(prior, [(task, k) for task in TASKS for k in RETRIEVAL_KS]):
        t.record(f"2-{source}", "Random", f"{task} P@{k}", v, RETRIEVAL_RANDOM)
    for init in (*TABLE2_ROWS, *(b for b in IMAGE_ONLY_BASELINES if b in plan.baselines)):
        ran = init == "convirt" or init in plan.baselines
        cells = [INIT_NAMES[init] + ("" if ran else " (not run)")]
        for task in TASKS:
            for k in RETRIEVAL_KS:
                paper = (RETRIEVAL.get((task, init)) or {}).get(k)
                ours: Value | str = "not run" if not ran else _retrieval_value(frame, INIT_NAMES[init], task, space, k)
                if task == "text_image" and ours == "not run" and ran:
                    ours = "–" if init != "contrastive_binary" else "not measured"
                t.record(f"2-{source}", INIT_NAMES[init], f"{task} P@{k}", ours, paper)
                cells.append(cell(ours, paper))
        lines.append(_row(cells))
    if source == PAPER_RETRIEVAL:
        upper = RETRIEVAL.get(("image_image", "convirt_chexpert_supervised"), {})
        cells = [f"{UPPER_BOUND} (not run)"]
        for task in TASKS:
            for k in RETRIEVAL_KS:
                paper = upper.get(k) if task == "image_image" else None
                t.record(f"2-{source}", UPPER_BOUND, f"{task} P@{k}", "not run", paper)
                cells.append(cell("not run", paper))
        lines.append(_row(cells))
    lines += [
        "",
        f"Precision@k in percent, ties counted by expectation; image-image in `{space}` (image-only encoders: "
        "`h_v`), text-image in the shared space. Random: the class prior of the lists (what a random ranking "
        f"scores). Per-category tables: `retrieval/{source}/retrieval.md`.",
        "",
    ]
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Table 3


def _group(runs: Sequence[GridRun]) -> dict[tuple, list[GridRun]]:
    groups: dict[tuple, list[GridRun]] = {}
    for run in runs:
        key = tuple((k, v) for k, v in run.changes if k != REPLICATE_KEY)
        groups.setdefault(key, []).append(run)
    return groups


def _label(changes: tuple) -> str:
    return GridRun(changes).label if changes else "ConVIRT (default)"


def _paper_row(changes: tuple) -> tuple[float, float, float] | None:
    if not changes:
        return HYPERPARAMETERS[("default", None)]
    if len(changes) != 1:
        return None
    key, value = changes[0]
    return next((v for (k, x), v in HYPERPARAMETERS.items() if k == key and _equal(x, value)), None)


def _equal(a: object, b: object) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b))
    return a == b


def _combine(values: Sequence[Value | str]) -> Value | str:
    """Replicate pretraining runs: the mean of their values, ± the std across runs (one run: as it is)."""
    numbers = [v for v in values if isinstance(v, Value)]
    if not numbers:
        return next((v for v in values if isinstance(v, str)), "pending")
    if len(numbers) == 1:
        return numbers[0]
    means = np.array([v.mean for v in numbers])
    return Value(float(means.mean()), float(means.std(ddof=1)), len(numbers))


def _table3(t: Tables) -> list[str]:
    plan = t.plan
    lines = ["## Table 3: hyperparameters", ""]
    if not plan.table3.grid and not plan.table3.pretrain_seeds:
        return [*lines, "Not run (the plan has no table3.grid).", ""]
    dataset = plan.table3_dataset()
    space = plan.evaluation.image_space
    source = next(iter(retrieval_sources(plan)), None)
    fraction = _fraction(plan.table3.fraction)
    header = ["Settings", f"{dataset or 'RSNA'} linear ({fraction})", "Image-image (P@10)", "Text-image (P@10)"]
    lines += [_row(header), _rule(len(header))]
    groups: dict[tuple, list[str]] = {(): ["default"]}  # changed keys (replicates merged) -> run names
    for changes, runs in _group(t.graph.grid).items():
        groups.setdefault(changes, []).extend(run.name for run in runs)
    for key, value in HYPERPARAMETERS:  # the paper's rows that the grid leaves out, marked as not run
        if key != "default" and not any(len(c) == 1 and c[0][0] == key and _equal(c[0][1], value) for c in groups):
            groups[((key, value),)] = []
    for changes, names in groups.items():
        paper = _paper_row(changes) or (None, None, None)
        values = [
            _combine([_table3_classification(t, name, dataset) for name in names]),
            *(_combine([_table3_retrieval(t, name, source, task, space) for name in names]) for task in TASKS),
        ] if names else ["not run"] * 3  # fmt: skip
        label = _label(changes) + ("" if names else " (not run)")
        label += f" ({len(names)} pretraining runs)" if len(names) > 1 else ""
        for value, column, paper_value in zip(values, header[1:], paper):
            t.record("3", label, column, value, paper_value)
        lines.append(_row([label, *(cell(v, p) for v, p in zip(values, paper))]))
    seeds = plan.table3.seeds or plan.evaluation.seeds
    other = "" if dataset == "rsna" else " (the paper's column is RSNA's: other data)"
    lines += [
        "",
        f"Classification: {dataset or 'no data'}{other}, linear probe on {fraction} of the labels, mean ± sample std "
        f"over {seeds} probe seed(s) of one pretraining run; a row with several pretraining runs (replicates over "
        f"{REPLICATE_KEY}) shows the mean ± std across the runs of each run's mean. Retrieval: "
        f"{source or 'no data'}, P@10, image-image in `{space}`. Grid mode: {plan.table3.mode}; every row but the "
        "default changes only the keys it names.",
        "",
    ]
    return lines


def _table3_classification(t: Tables, run: str, dataset: str | None) -> Value | str:
    if dataset is None:
        return "no data"
    summary = _summary(table3_dir(t.plan, run, "classify"))
    return _classification_value(summary, "convirt", t.plan.table3.fraction)


def _table3_retrieval(t: Tables, run: str, source: str | None, task: str, space: str) -> Value | str:
    if source is None:
        return "no data"
    folder = retrieval_dir(t.plan, source) if run == "default" else table3_dir(t.plan, run, "retrieval")
    return _retrieval_value(t.retrieval(folder), INIT_NAMES["convirt"], task, space, 10)


# ---------------------------------------------------------------------------------------------------------------
# Table 4, Figure 4


def _table4(t: Tables) -> list[str]:
    plan = t.plan
    lines = ["## Table 4: image-only contrastive pretraining", ""]
    if not any(b in plan.baselines for b in IMAGE_ONLY_BASELINES):
        return [*lines, "Not run (enable the baselines simclr and moco_v2).", ""]
    header = ["Method", "RSNA Linear (1 %, AUC)", "CheXpert Linear (1 %, AUC)", "Image-image (P@10)"]
    lines += [_row(header), _rule(len(header))]
    linear = {d: t.classification(d, "linear") for d in ("rsna", "chexpert") if d in plan.labelled()}
    frame = t.retrieval(retrieval_dir(plan, PAPER_RETRIEVAL)) if plan.data.chexpert is not None else None
    for init in ("imagenet", *IMAGE_ONLY_BASELINES, "convirt"):
        ran = init == "convirt" or init in plan.baselines
        cells = [INIT_NAMES[init] + ("" if ran else " (not run)")]
        for dataset in ("rsna", "chexpert"):
            paper = CLASSIFICATION.get((dataset, "linear", init), {}).get(0.01)
            ours: Value | str = ("no data" if dataset not in linear else
                                 _classification_value(linear[dataset], init, 0.01) if ran else "not run")  # fmt: skip
            t.record("4", INIT_NAMES[init], f"{dataset} linear 1 %", ours, paper)
            cells.append(cell(ours, paper))
        paper = (RETRIEVAL.get(("image_image", init)) or {}).get(10)
        ours = ("no data" if plan.data.chexpert is None else
                _retrieval_value(frame, INIT_NAMES[init], "image_image", plan.evaluation.image_space, 10) if ran
                else "not run")  # fmt: skip
        t.record("4", INIT_NAMES[init], "image_image P@10", ours, paper)
        cells.append(cell(ours, paper))
        lines.append(_row(cells))
    return [*lines, ""]


def _figure4(t: Tables) -> list[str]:
    plan = t.plan
    lines = ["## Figure 4: pretraining loss against end-task scores", ""]
    if not plan.figure4.enabled:
        return [*lines, "Not run (figure4.enabled is false).", ""]
    folder = figure4_dir(plan)
    if not (folder / "correlations.csv").is_file():
        return [*lines, "Pending.", ""]
    correlations = pd.read_csv(folder / "correlations.csv")
    lines += ["| End task | points | Pearson r | Spearman r |", "|---|---|---|---|"]
    for row in correlations.itertuples():
        lines.append(f"| {row.metric} | {row.n} | {row.pearson_r:.3f} | {row.spearman_r:.3f} |")
    image = Path("..") / folder.relative_to(plan.out) / "figure4.png"
    return [*lines, "", f"![Figure 4]({image.as_posix()}) Every point a kept checkpoint: `{folder}/trajectory.csv`.",
            ""]  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------


def _fraction(fraction: float) -> str:
    return "all" if fraction >= 1 else f"{fraction * 100:g} %"


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _rule(n: int) -> str:
    return "|" + "---|" * n


def render(graph: StageGraph) -> tuple[str, pd.DataFrame]:
    t = Tables(graph)
    plan = graph.plan
    given = ", ".join(plan.labelled()) or "none"
    lines = [
        "# ConVIRT: the paper's tables, reproduced",
        "",
        f"Plan: `{plan.out / 'plan.yaml'}` (pretraining data: "
        f"{'MIMIC-CXR' if plan.data.mimic_cxr is not None else 'synthetic'}; downstream data: {given}; "
        f"baselines: {', '.join(plan.baselines) or 'none'}). Each cell: ours (the paper's). `not run`: not in the "
        "plan; `no data`: the dataset was not given; `pending`: planned, not finished; `–`: not reported.",
        "",
    ]
    lines += _table1(t, "linear") + _table1(t, "finetune") + _other_classification(t)
    sources = retrieval_sources(plan)
    if not sources:
        lines += ["## Table 2: zero-shot retrieval", "", "No data (give data.chexpert for CheXpert 8x200).", ""]
    for source in sources:
        lines += _table2(t, source)
    lines += _table3(t) + _table4(t) + _figure4(t)
    return "\n".join(lines), pd.DataFrame(t.records)


def write_tables(graph: StageGraph) -> Path:
    text, frame = render(graph)
    path = tables_file(graph.plan)
    atomic_write_text(path.with_suffix(".csv"), frame.to_csv(index=False))
    atomic_write_text(path, text)
    return path
