"""`convirt reproduce` end to end on tiny copies of every source in its real layout (MIMIC-CXR-JPG, CheXpert,
RSNA, COVIDx, MURA): every table cell comes out, a second invocation skips every stage, and a killed
classification stage continues run by run."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from convirt.cli import main
from reproduce_fixtures import make_chexpert, make_covidx, make_mimic, make_mura, make_rsna

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def tiny_pretraining(text_encoder: Path) -> list[str]:
    return [
        "model.image_encoder=resnet18", "model.image_weights=none", f"model.text_encoder={text_encoder}",
        "model.freeze_layers=2", "model.projection_dim=32", "model.text_lowercase=null", "data.batch_size=4",
        "data.num_workers=0", "data.augment.output_size=64", "data.augment.blur_kernel_size=9",
        "train.val_every_steps=2", "train.max_evals=3", "train.checkpoint_every_steps=2", "train.limit_val_batches=2",
        "train.precision=32", "train.progress_bar=false", "train.tensorboard=false", "train.log_every_steps=1",
        "train.accelerator=cpu",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory, tiny_bert_dir: Path):
    """The whole plan run once, in this process (each stage's command through the CLI's main)."""
    root = tmp_path_factory.mktemp("reproduce")
    data = root / "data"
    plan = {
        "output": str(root / "out"),
        "data": {
            "mimic_cxr": {"path": str(make_mimic(data / "mimic-cxr-jpg")), "prepare_options": ["--val-size", "4"]},
            "chexpert": {"path": str(make_chexpert(data / "chexpert", data / "lists")), "options": ["--val-size", "4"]},
            "rsna": {"path": str(make_rsna(data / "rsna")), "options": ["--val-size", "4", "--test-size", "6"]},
            "covidx": {"path": str(make_covidx(data / "covidx")), "options": ["--val-size", "3"]},
            "mura": str(make_mura(data / "mura")),
        },
        "pretrain": {
            "config": str(REPO / "configs" / "paper.yaml"),
            "overrides": tiny_pretraining(tiny_bert_dir),
            "baseline_configs": str(REPO / "configs" / "baselines"),
        },
        "baselines": ["random", "contrastive_binary"],
        "evaluation": {
            "seeds": 1,
            "classify_options": shlex.split("--image-size 32 --batch-size 8 --max-epochs 2 --warmup-steps 2 --no-fast"),
            "retrieval_options": ["--k", "5", "10", "50", "--image-size", "32", "--no-fast"],
            "retrieval_lists": str(data / "lists"),
        },
        "table3": {"grid": ["loss.temperature=0.1,1"]},  # 0.1 is the default: one grid run, tau = 1
        "figure4": {"enabled": True},
    }
    plan_path = root / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    assert main(["reproduce", "--plan", str(plan_path), "--in-process"]) == 0
    return root / "out"


def _cells(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "results" / "paper-tables.csv")


def _status(cells: pd.DataFrame, table: str, row: str) -> set[str]:
    return set(cells[(cells["table"] == table) & (cells["row"] == row)]["status"])


def test_every_planned_cell_of_every_table_is_filled(reproduced: Path):
    cells = _cells(reproduced)
    for table in ("1a", "1b"):  # 4 datasets: RSNA, CheXpert, MURA at 1/10/100 %, COVIDx at 10/100 % (as the paper)
        for row in ("Random Init.", "Contrastive-Binary", "ConVIRT"):
            part = cells[(cells["table"] == table) & (cells["row"] == row)]
            assert len(part) == 11 and set(part["status"]) == {"ok"}, (table, row, part)
            assert part["ours"].between(0, 100).all() and part["paper"].notna().all()
        for row in ("ImageNet Init.", "Caption-Transformer", "Caption-LSTM"):
            assert _status(cells, table, row) == {"not run"}
    table2 = "2-chexpert-8x200"
    for row in ("Random", "ConVIRT"):
        assert (
            _status(cells, table2, row) == {"ok"}
            and len(cells[(cells["table"] == table2) & (cells["row"] == row)]) == 6
        )
    binary = cells[(cells["table"] == table2) & (cells["row"] == "Contrastive-Binary")]
    assert list(binary["status"]) == ["ok"] * 6  # text-image by its pair classifier's score
    prior = cells[(cells["table"] == table2) & (cells["row"] == "Random")]
    assert prior["ours"].round(4).tolist() == [12.5] * 6  # 7 candidates per category out of 56: the class prior
    assert _status(cells, table2, "ConVIRT + CheXpert Supervised") == {"not run"}
    assert _status(cells, "3", "ConVIRT (default)") == {"ok"} and _status(cells, "3", "τ = 1") == {"ok"}
    assert _status(cells, "3", "τ = 0.01 (not run)") == {"not run"}
    paper = cells[(cells["table"] == "3") & (cells["row"] == "τ = 1")]["paper"].tolist()
    assert paper == [89.6, 25.0, 31.0]

    markdown = (reproduced / "results" / "paper-tables.md").read_text()
    convirt_rsna = cells[(cells["table"] == "1a") & (cells["row"] == "ConVIRT") & (cells["column"] == "rsna 1 %")]
    assert f"| ConVIRT | {convirt_rsna['ours'].iloc[0]:.1f} (90.7) |" in markdown  # ours beside the paper's
    assert "## Table 4" in markdown and "Not run (enable the baselines simclr and moco_v2)." in markdown

    correlations = pd.read_csv(reproduced / "figure4" / "correlations.csv")
    assert set(correlations["n"]) == {3}  # three kept checkpoints
    trajectory = pd.read_csv(reproduced / "figure4" / "trajectory.csv")
    assert trajectory["val_loss"].notna().all() and list(trajectory["evaluation"]) == [1, 2, 3]
    assert {"image-image P@10", "text-image P@10"} <= set(correlations["metric"])
    assert (reproduced / "figure4" / "figure4.png").stat().st_size > 5000
    assert sorted(p.name for p in (reproduced / "pretrain" / "convirt" / "checkpoints").glob("eval-*")) == [
        "eval-0001.ckpt", "eval-0002.ckpt", "eval-0003.ckpt"
    ]  # fmt: skip


def test_a_second_invocation_skips_every_stage(reproduced: Path):
    plan = reproduced / "plan.yaml"
    process = subprocess.run(
        [sys.executable, "-m", "convirt.cli", "reproduce", "--plan", str(plan)],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert process.returncode == 0, process.stderr[-3000:]
    listed = subprocess.run(
        [sys.executable, "-m", "convirt.cli", "reproduce", "--plan", str(plan), "--dry-run", "--json"],
        capture_output=True, text=True, timeout=600, check=True,
    )  # fmt: skip
    stages = json.loads(listed.stdout)["stages"]
    datasets = ("rsna", "chexpert", "covidx", "mura")
    assert [s["name"] for s in stages] == [
        *(f"labelled-{d}" for d in datasets), "prepare", "pretrain", "pretrain-contrastive_binary",
        *(f"classify-{d}-{p}" for d in datasets for p in ("linear", "finetune")), "retrieval-chexpert-8x200",
        "table3-pretrain-temperature-1", "table3-classify-default", "table3-classify-temperature-1",
        "table3-retrieval-temperature-1", "figure4", "tables",
    ]  # fmt: skip
    assert all(s["done"] for s in stages), [s for s in stages if not s["done"]]
    skipped = [line for line in process.stdout.splitlines() if line.endswith(": done, skipped")]
    assert len(skipped) == len(stages) and "0 stage(s) ran" in process.stdout


def test_the_trajectory_scores_no_checkpoint_twice(reproduced: Path, capsys):
    command = json.loads((reproduced / "stages" / "figure4.json").read_text())["command"]
    before = pd.read_csv(reproduced / "figure4" / "trajectory.csv")
    capsys.readouterr()
    assert main(command[1:]) == 0  # the figure4 stage's own command, run again
    assert capsys.readouterr().out.count("scored earlier (trajectory.csv), reused") == 3
    pd.testing.assert_frame_equal(pd.read_csv(reproduced / "figure4" / "trajectory.csv"), before)


def test_a_killed_classification_stage_continues_run_by_run(reproduced: Path, capsys):
    out = reproduced / "classify" / "rsna-linear"
    runs = pd.read_csv(out / "runs.csv", dtype={"run_key": str})
    assert len(runs) == 9  # 3 encoders x 3 fractions x 1 seed
    runs.iloc[:-2].to_csv(out / "runs.csv", index=False)  # killed before its last two runs and its summary
    (out / "metrics.json").unlink()
    capsys.readouterr()
    assert (
        main(["reproduce", "--plan", str(reproduced / "plan.yaml"), "--in-process", "--stage", "classify-rsna-linear"])
        == 0
    )
    printed = capsys.readouterr().out
    assert printed.count("finished earlier (runs.csv), reused") == 7 and printed.count("best epoch") == 2
    again = pd.read_csv(out / "runs.csv", dtype={"run_key": str})
    assert again["run_key"].tolist() == runs["run_key"].tolist()
    assert again["test"].tolist() == pytest.approx(runs["test"].tolist())
    # the tables stage is now older than the classification's outputs: it is the only stage left to run
    assert main(["reproduce", "--plan", str(reproduced / "plan.yaml"), "--in-process"]) == 0
    printed = capsys.readouterr().out
    assert "tables: " in printed and "1 stage(s) ran" in printed
