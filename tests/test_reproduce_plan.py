"""`convirt reproduce` without training: the plan and its errors, the Table 3 grid, the stage graph, the "done"
tests, the tables from hand-written results, Figure 4's correlations, and one stage run as a real child process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from convirt.cli import main
from convirt.config import load_config
from convirt.errors import ConfigError
from convirt.evaluation.trajectory import correlations, validation_losses
from convirt.reproduce import build_stages, load_plan, render, run_plan, stage_status
from convirt.reproduce.grid import expand_grid, parse_grid
from convirt.reproduce.stages import INIT_NAMES, record_file, write_record

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "configs" / "demo.yaml")


def synthetic_plan(tmp_path: Path, *overrides: str):
    return load_plan(None, [f"output={tmp_path / 'out'}", "data.synthetic={size: 8, eval_size: 40}",
                            f"pretrain.config={DEMO}", *overrides])  # fmt: skip


# ---------------------------------------------------------------------------------------------------------- plan
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "give exactly one pretraining source"),
        (["data.synthetic={}", "data.mimic_cxr=/x"], "give exactly one pretraining source"),
        (["data.synthetic={}", "data.rsna=/no/such/folder"], r"plan data.rsna.path: /no/such/folder does not exist"),
        (
            ["data.synthetic={}", "evaluation.seed=1"],
            r"unknown config key\(s\) \['seed'\] in section 'plan.evaluation'",
        ),
        (["data.synthetic={}", "baselines=[simclr, byol]"], r"plan baselines: unknown \['byol'\]"),
        (["data.synthetic={}", "table3.dataset=rsna"], r"plan table3.dataset: 'rsna' is not among the datasets"),
        (["data.synthetic={}", "evaluation.protocols=[probe]"], r"evaluation.protocols: unknown \['probe'\]"),
        (["data.synthetic={}", "table3.mode=grid"], "table3.mode 'grid'"),
    ],
)
def test_plan_mistakes_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_plan(None, overrides)


def test_plan_file_shorthand_and_default_fractions(tmp_path):
    (tmp_path / "covidx").mkdir()
    (tmp_path / "plan.yaml").write_text(yaml.safe_dump({"data": {"synthetic": {}, "covidx": str(tmp_path / "covidx")}}))
    plan = load_plan(tmp_path / "plan.yaml", ["evaluation.fractions=[0.01, 0.1, 1]"])
    assert plan.data.covidx.path == str(tmp_path / "covidx")  # a plain path means {path: ...}
    assert plan.fractions("covidx") == [0.1, 1.0] and plan.fractions("synthetic") == [0.01, 0.1, 1.0]
    assert plan.table3_dataset() == "synthetic"  # no RSNA: the synthetic labels stand in
    with pytest.raises(ConfigError, match=r"plan file .*missing.yaml does not exist"):
        load_plan(tmp_path / "missing.yaml")


# ---------------------------------------------------------------------------------------------------------- grid
def test_grid_one_factor_at_a_time_leaves_the_default_out():
    base = load_config(DEMO)
    items = ["loss.temperature=0.01,0.1,1", "data.batch_size=16,32,128", "model.head=linear"]
    runs = expand_grid(parse_grid(items, DEMO, []), base)
    assert [r.name for r in runs] == ["temperature-0.01", "temperature-1", "batch_size-16", "batch_size-128",
                                      "head-linear"]  # fmt: skip
    assert [r.label for r in runs] == ["τ = 0.01", "τ = 1", "bs = 16", "bs = 128", "linear proj."]
    assert runs[0].overrides == ["loss.temperature=0.01"] and runs[2].changes == (("data.batch_size", 16),)


def test_grid_product_is_every_combination_but_the_default():
    base = load_config(DEMO)
    runs = expand_grid(parse_grid(["loss.temperature=0.1,1", "model.head=mlp,linear"], DEMO, []), base, "product")
    assert [r.name for r in runs] == ["head-linear", "temperature-1", "temperature-1+head-linear"]
    assert runs[2].label == "τ = 1, linear proj."


def test_pretrain_seeds_repeat_the_default_and_every_grid_run(tmp_path):
    graph = build_stages(synthetic_plan(tmp_path, "table3.grid=[model.head=linear]", "table3.pretrain_seeds=[0, 1]"))
    assert [r.name for r in graph.grid] == ["head-linear", "seed-1", "head-linear+seed-1"]  # seed 0 is the default's
    assert graph["table3-pretrain-head-linear+seed-1"].argv[-2:] == ["model.head=linear", "train.seed=1"]
    assert "table3-retrieval-seed-1" in graph.names()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("loss.temprature=0.1", r"grid item 'loss.temprature=0.1': unknown config key\(s\) \['temprature'\]"),
        ("data.batch_size=16,big", "grid item 'data.batch_size=16,big': data.batch_size must be an integer"),
        ("loss.temperature", "must look like section.key=v1,v2"),
    ],
)
def test_grid_mistakes_are_named(item, message):
    with pytest.raises(ConfigError, match=message):
        parse_grid([item], DEMO, [])


# --------------------------------------------------------------------------------------------------- stage graph
def test_stage_graph_of_a_synthetic_plan(tmp_path):
    plan = synthetic_plan(tmp_path, "baselines=[random]", "figure4.enabled=true",
                          "table3.grid=[loss.temperature=0.01]", "evaluation.protocols=[linear]")  # fmt: skip
    graph = build_stages(plan)
    assert graph.names() == [
        "synthesize-pairs", "synthesize-eval", "labelled-synthetic", "prepare", "pretrain",
        "classify-synthetic-linear", "retrieval-synthetic", "table3-pretrain-temperature-0.01",
        "table3-classify-default", "table3-classify-temperature-0.01", "table3-retrieval-temperature-0.01",
        "figure4", "tables",
    ]  # fmt: skip
    out = tmp_path / "out"
    assert graph["pretrain"].argv[-1] == "train.keep_checkpoints=every_eval"  # Figure 4 needs them
    assert "train.keep_checkpoints=every_eval" not in graph["table3-pretrain-temperature-0.01"].argv
    assert graph["table3-pretrain-temperature-0.01"].argv[-1] == "loss.temperature=0.01"
    classify = graph["classify-synthetic-linear"].argv
    assert classify[classify.index("--dataset") + 1] == f"manifest:{out / 'data/labelled/synthetic.csv'}"
    encoders = [classify[i + 1] for i, w in enumerate(classify) if w == "--encoder"]
    assert encoders == ["random:mobilenet_v2", str(out / "pretrain/convirt/checkpoints/best.ckpt")]
    assert graph["figure4"].after == ["pretrain", "labelled-synthetic", "synthesize-eval"]
    assert graph["tables"].argv == ["convirt", "reproduce", "--plan", str(out / "plan.yaml"), "--stage", "tables"]


def test_pretraining_is_done_when_its_run_has_every_step_of_the_planned_config(tmp_path):
    graph = build_stages(synthetic_plan(tmp_path))
    stage = graph["pretrain"]
    run = Path(stage.config.train.output_dir)
    assert stage_status(graph.plan, stage) == (False, "not started")
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text(stage.config.to_yaml())
    (run / "summary.json").write_text(json.dumps({"steps": stage.config.max_steps - 1}))
    assert stage_status(graph.plan, stage)[1].startswith(f"not finished ({stage.config.max_steps - 1} of")
    (run / "summary.json").write_text(json.dumps({"steps": stage.config.max_steps}))
    assert stage_status(graph.plan, stage) == (True, f"done ({stage.config.max_steps} steps)")
    other = load_config(DEMO, [*stage.argv[4:], "loss.temperature=0.5", "train.progress_bar=true"])
    (run / "config.yaml").write_text(other.to_yaml())  # progress_bar changes nothing computed; tau does
    assert stage_status(graph.plan, stage) == (
        False, "finished with another config (loss.temperature differ): give it another output folder"
    )  # fmt: skip


def test_other_stages_are_done_when_recorded_and_newer_than_their_inputs(tmp_path):
    graph = build_stages(synthetic_plan(tmp_path))
    stage = graph["classify-synthetic-linear"]
    for output in stage.outputs:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("x")
    assert stage_status(graph.plan, stage)[0] is False  # no record of the command
    write_record(graph.plan, stage, 1.0)
    assert stage_status(graph.plan, stage) == (True, "done")
    recorded = json.loads(record_file(graph.plan, stage.name).read_text())
    record_file(graph.plan, stage.name).write_text(json.dumps({**recorded, "command": stage.argv[:-1]}))
    assert "command changed" in stage_status(graph.plan, stage)[1]
    write_record(graph.plan, stage, 1.0)
    checkpoint = stage.inputs[1]
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_bytes(b"newer")
    import os

    os.utime(checkpoint, (stage.outputs[0].stat().st_mtime + 5,) * 2)
    assert stage_status(graph.plan, stage) == (False, f"{checkpoint} is newer than its outputs: runs again")


def test_a_stage_whose_inputs_are_not_done_is_refused(tmp_path, capsys):
    plan = synthetic_plan(tmp_path)
    assert main(["reproduce", f"output={plan.output}", "data.synthetic={size: 8}", f"pretrain.config={DEMO}",
                 "--stage", "pretrain"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "stage pretrain needs stage prepare first, which is not done" in err and len(err.splitlines()) == 1
    assert main(["reproduce", "data.synthetic={}", f"pretrain.config={DEMO}", "--stage", "pretrian"]) == 2
    assert "no stage named 'pretrian'" in capsys.readouterr().err


# -------------------------------------------------------------------------------------------------------- tables
def _write_classify(folder: Path, rows: list[tuple[str, float, int, float]], kinds: dict | None = None) -> None:
    """runs.csv as the stages' classifications write it: each encoder named as in the tables, ``kinds`` the init
    column where it is not the row's own (an ImageNet row given as NAME=FILE is ``custom``)."""
    folder.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(
        [{"encoder": INIT_NAMES[init], "init": (kinds or {}).get(init, init), "fraction": f, "seed": s, "test": t,
          "n_train": 10} for init, f, s, t in rows]
    )  # fmt: skip
    frame.to_csv(folder / "runs.csv", index=False)
    (folder / "metrics.json").write_text("{}")


def _write_retrieval(folder: Path, values: dict[tuple[str, str, str, int], float]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"encoder": e, "task": t, "space": s, "category": "mean", "k": k, "precision_percent": v}
            for (e, t, s, k), v in values.items()]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "retrieval.csv", index=False)
    (folder / "metrics.json").write_text("{}")


def test_tables_put_ours_beside_the_papers_and_merge_pretraining_replicates(tmp_path):
    plan = synthetic_plan(tmp_path, "evaluation.protocols=[linear]", "table3.mode=product",
                          'table3.grid=["loss.temperature=0.1,1", "train.seed=0,1"]')  # fmt: skip
    graph = build_stages(plan)
    assert [r.name for r in graph.grid] == ["seed-1", "temperature-1", "temperature-1+seed-1"]
    out = tmp_path / "out"
    _write_classify(out / "classify/synthetic-linear", [("convirt", 0.01, 0, 0.90), ("convirt", 0.01, 1, 0.92)])
    scores = {"default": (0.80, 40.0, 50.0), "seed-1": (0.84, 44.0, 56.0), "temperature-1": (0.70, 20.0, 30.0),
              "temperature-1+seed-1": (0.70, 22.0, 30.0)}  # fmt: skip
    for run, (auc, image, text) in scores.items():
        _write_classify(out / "table3" / run / "classify", [("convirt", 0.01, 0, auc)])
        folder = out / "retrieval/synthetic" if run == "default" else out / "table3" / run / "retrieval"
        values = {("ConVIRT", "image_image", "h_v", 10): image, ("ConVIRT", "image_image", "v", 10): 1.0,
                  ("ConVIRT", "text_image", "v", 10): text}  # fmt: skip
        _write_retrieval(folder, values)
    text, cells = render(graph)
    # 2 seeds of one run: mean ± sample std (0.90, 0.92 -> 91.0 ± 1.4); a non-paper dataset has no paper number
    assert "| ConVIRT | 91.0 ± 1.4 | not run | not run |" in text
    # Table 3: replicates over train.seed merge into one row, ± across the pretraining runs; the paper beside it
    assert (
        "| ConVIRT (default) (2 pretraining runs) | 82.0 ± 2.8 (90.7) | 42.0 ± 2.8 (42.9) | 53.0 ± 4.2 (57.5) |" in text
    )
    assert "| τ = 1 (2 pretraining runs) | 70.0 ± 0.0 (89.6) | 21.0 ± 1.4 (25.0) | 30.0 ± 0.0 (31.0) |" in text
    assert "| bs = 16 (not run) | not run (90.3) | not run (40.0) | not run (55.8) |" in text
    row = cells[(cells["table"] == "3") & (cells["column"] == "Image-image (P@10)")].iloc[0]
    assert (row["ours"], round(row["ours_std"], 4), row["ours_n"], row["paper"]) == (42.0, round(2 * math.sqrt(2), 4),
                                                                                    2, 42.9)  # fmt: skip
    assert "## Table 1 (a): linear classification" in text and "| ConVIRT | no data (90.7) |" in text
    assert "Not run (the plan's evaluation.protocols do not include finetune)." in text


def test_tables_read_an_imagenet_row_given_as_a_file_and_the_class_prior(tmp_path):
    plan = synthetic_plan(tmp_path, "evaluation.protocols=[linear]", "baselines=[random, imagenet]")
    graph = build_stages(plan)
    out = tmp_path / "out"
    assert "--encoder mobilenet_v2=" in graph["classify-synthetic-linear"].command  # builtin:imagenet: a file
    _write_classify(out / "classify/synthetic-linear", [("imagenet", 0.01, 0, 0.74), ("imagenet", 0.01, 1, 0.76)],
                    kinds={"imagenet": "custom"})  # fmt: skip
    prior = {("random (class prior)", "image_image", "", k): 12.2 for k in (5, 10, 50)}  # no space: empty in the CSV
    prior |= {("random (class prior)", "text_image", "", k): 12.5 for k in (5, 10, 50)}
    _write_retrieval(out / "retrieval/synthetic", prior)
    text, _ = render(graph)
    assert "| ImageNet Init. | 75.0 ± 1.4 | not run | not run |" in text
    assert "| Random | 12.2 (12.5) | 12.2 (12.5) | 12.2 (12.5) | 12.5 (12.5) | 12.5 (12.5) | 12.5 (12.5) |" in text


# ------------------------------------------------------------------------------------------------------ figure 4
def test_figure4_correlations_by_hand():
    frame = pd.DataFrame({"neg_val_loss": [-3.0, -2.5, -2.0, -1.5], "a": [10.0, 20.0, 30.0, 40.0],
                          "b": [10.0, 30.0, 20.0, 40.0], "c": [1.0, 2.0, math.nan, math.nan]})  # fmt: skip
    table = correlations(frame).set_index("metric")
    assert table.loc["a", "pearson_r"] == pytest.approx(1.0) and table.loc["a", "spearman_r"] == pytest.approx(1.0)
    # centred x (-0.75, -0.25, 0.25, 0.75), y (-15, 5, -5, 15): r = 20 / (sqrt(1.25) sqrt(500)) = 0.8; ranks alike
    assert table.loc["b", "pearson_r"] == pytest.approx(0.8) and table.loc["b", "spearman_r"] == pytest.approx(0.8)
    assert table.loc["c", "n"] == 2 and math.isnan(table.loc["c", "pearson_r"])  # fewer than 3 points


def test_figure4_losses_are_matched_by_evaluation_not_by_step(tmp_path):
    # The logs as Lightning's CSV logger writes them: a validation after 10 optimiser steps (the checkpoint's
    # global_step 10, eval-0001.ckpt) is logged at step 9. Session 1 resumed from step 10 and repeated evaluation 2.
    header = "epoch,lr,step,train/loss,val/evaluations,val/loss\n"
    first = header + "0,1e-4,9,3.76,,\n0,,9,,1.0,3.54\n0,1e-4,19,3.49,,\n0,,19,,2.0,3.50\n"
    resumed = header + "0,1e-4,19,3.49,,\n0,,19,,2.0,3.25\n0,,29,,3.0,3.125\n"
    for session, text in enumerate((first, resumed)):
        (tmp_path / "logs" / f"version_{session}").mkdir(parents=True)
        (tmp_path / "logs" / f"version_{session}" / "metrics.csv").write_text(text)
    assert validation_losses(tmp_path) == {1: 3.54, 2: 3.25, 3: 3.125}
    (tmp_path / "logs" / "version_1" / "metrics.csv").write_text("epoch,lr,step,train/loss\n0,1e-4,29,3.4\n")
    assert validation_losses(tmp_path) == {1: 3.54, 2: 3.50}  # a session without validations changes nothing


# ---------------------------------------------------------------------------------- a stage as a real child process
def test_a_stage_runs_as_its_own_process_with_a_log_and_a_record(tmp_path):
    plan = synthetic_plan(tmp_path, "data.synthetic.image_size=64")
    graph = build_stages(plan)
    assert run_plan(graph, patterns=["synthesize-*"], log=lambda _: None) == ["synthesize-pairs", "synthesize-eval"]
    out = tmp_path / "out"
    assert len(pd.read_csv(out / "data/synthetic/pairs/pairs.csv")) == 8
    assert "pairs:" in (out / "logs" / "synthesize-pairs.log").read_text()
    assert json.loads(record_file(plan, "synthesize-eval").read_text())["command"][:2] == ["convirt", "synthesize"]
    assert yaml.safe_load((out / "plan.yaml").read_text())["data"]["synthetic"]["size"] == 8
    assert run_plan(graph, patterns=["synthesize-*"], log=lambda _: None) == []  # done: skipped
    dry = subprocess.run([sys.executable, "-m", "convirt.cli", "reproduce", "--plan", str(out / "plan.yaml"),
                          "--dry-run"], capture_output=True, text=True, check=True, timeout=600).stdout  # fmt: skip
    assert "[done] synthesize-pairs" in dry and "[to run] prepare" in dry
    assert f"    convirt synthesize --out {out / 'data/synthetic/pairs'} --size 8 --seed 0 --image-size 64" in dry
