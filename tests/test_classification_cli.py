"""`convirt evaluate classify` end to end on tiny data: files written, Table 1 layout, paper numbers, errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import write_image_folder
from convirt.cli import main
from convirt.data.labelled import LabelledTask, write_labelled_manifest
from convirt.evaluation.classification.runner import encoder_choice


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


COMMON = ["--image-size", "32", "--batch-size", "8", "--max-epochs", "3", "--no-fast"]


def test_linear_probe_command_writes_all_outputs(tmp_path, capsys):
    data = write_image_folder(tmp_path / "kermany")
    out = tmp_path / "out"
    code = main(
        ["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--encoder", "random:resnet18",
         "--fractions", "0.25,1", "--seeds", "2", "--val-size", "0.25", "--output", str(out), *COMMON]
    )  # fmt: skip
    assert code == 0
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 4 and set(runs["fraction"]) == {0.25, 1.0} and set(runs["seed"]) == {0, 1}
    assert (runs["n_test"] == 8).all() and (runs["recipe"] == "features").all()
    quarter = runs[runs["fraction"] == 0.25]
    assert quarter["subset_id"].nunique() == 2  # each seed its own subset
    summary = (out / "summary.md").read_text()
    assert "| Encoder | 25 % | 100 % |" in summary and "| random:resnet18 |" in summary
    mean = quarter["test"].mean() * 100
    std = quarter["test"].std(ddof=1) * 100
    assert f"{mean:.1f} ± {std:.1f}" in summary
    assert f"convirt evaluate classify --dataset imagefolder:{data} --encoder random:resnet18" in summary
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"]["counts"]["test"] == 8 and len(metrics["runs"]) == 4
    assert metrics["encoders"][0]["init"] == "random" and metrics["settings"]["seeds"] == [0, 1]
    assert sorted(p.name for p in (out / "roc").iterdir()) == ["random_resnet18-0.25.png", "random_resnet18-1.png"]
    assert (out / "manifest.csv").is_file() and (out / "manifest.csv.task.json").is_file()
    assert "25 %" in capsys.readouterr().out


def test_paper_dataset_gets_paper_numbers_beside_ours_and_finetune_runs(tmp_path):
    data = write_image_folder(tmp_path / "rsna-like")
    from convirt.data.sources import load_labelled_dataset

    manifest = load_labelled_dataset(f"imagefolder:{data}", val_size=0.25)
    frame = manifest.to_frame()
    frame["label"] = frame["label"].map({"NORMAL": "negative", "PNEUMONIA": "pneumonia"})
    task = LabelledTask(name="rsna", kind="binary", class_names=["negative", "pneumonia"], paper_key="rsna")
    path = write_labelled_manifest(frame, tmp_path / "rsna.csv", task)
    out = tmp_path / "ft"
    code = main(
        ["evaluate", "classify", "--dataset", f"manifest:{path}", "--encoder", "random:resnet18", "--protocol",
         "finetune", "--warmup-steps", "2", "--fractions", "0.5,1", "--seeds", "1", "--output", str(out), *COMMON]
    )  # fmt: skip
    assert code == 0
    summary = (out / "summary.md").read_text()
    assert "# rsna: fine-tune" in summary and "| Encoder | 50 % | paper 50 % | 100 % | paper 100 % |" in summary
    assert summary.count(" | 88.5 |") == 1  # Table 1 (b): random init fine-tuned, 100 %
    assert "--protocol finetune --fractions 0.5,1 --seeds 1" in summary and "--warmup-steps 2" in summary
    linear = tmp_path / "linear"
    main(["evaluate", "classify", "--dataset", f"manifest:{path}", "--encoder", "random:resnet18", "--fractions",
          "0.01,1", "--seeds", "1", "--output", str(linear), "--recipe", "paper", *COMMON])  # fmt: skip
    table = (linear / "summary.md").read_text()
    assert "| Encoder | 1 % | paper 1 % | 100 % | paper 100 % |" in table
    assert "| random:resnet18 |" in table and " | 55.0 | " in table and table.rstrip().endswith("```")
    assert "| 72.3 |" in table  # the paper's random-init linear RSNA numbers beside ours
    assert pd.read_csv(linear / "runs.csv")["recipe"].tolist() == ["paper", "paper"]


def test_errors_are_one_clear_line(tmp_path, capsys):
    data = write_image_folder(tmp_path / "k")
    assert main(["evaluate", "classify", "--dataset", f"imagefolder:{tmp_path / 'nope'}", "--encoder", "random:x"]) == 2
    assert "does not exist" in capsys.readouterr().err
    code = main(["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--encoder", f"{tmp_path / 'w.pt'}"])
    assert code == 2 and "image encoder" in capsys.readouterr().err
    assert main(["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--uncertain", "zeros"]) == 2
    assert "does not take option(s) ['uncertain']" in capsys.readouterr().err
    saved = tmp_path / "saved.csv"
    assert main(["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--save-manifest", str(saved)]) == 0
    assert pd.read_csv(saved)["split"].value_counts()["test"] == 8


def test_encoder_kinds():
    assert encoder_choice("random:resnet18").init == "random"
    assert encoder_choice("imagenet:resnet50").init == "imagenet"
    assert encoder_choice("/x/best.ckpt").init == "convirt"
    assert encoder_choice("resnet18=/x/w.pt", "mine").init == "custom"
    assert encoder_choice("resnet18=/x/w.pt", "mine").name == "mine"


def test_torchvision_state_dict_and_imagenet_hint(tmp_path, monkeypatch, capsys):
    import torchvision
    from torchvision.models import _api

    from convirt.errors import ModelLoadError
    from convirt.evaluation.classification.runner import load_encoder

    torch.manual_seed(3)
    reference = torchvision.models.resnet18()
    torch.save(reference.state_dict(), tmp_path / "resnet18-local.pth")  # like a downloaded torchvision file
    encoder = load_encoder(encoder_choice(f"resnet18={tmp_path / 'resnet18-local.pth'}"))
    assert torch.equal(encoder.backbone.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)
    assert encoder.feature_dim == 512

    def offline(*args, **kwargs):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr(_api.WeightsEnum, "get_state_dict", offline)
    # The library names the setting, not an option; the command line adds its option.
    with pytest.raises(ModelLoadError, match="resnet50") as error:
        load_encoder(encoder_choice("imagenet:resnet50"))
    assert "--encoder" not in str(error.value)
    data = write_image_folder(tmp_path / "k")
    assert main(["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--encoder", "imagenet:resnet50"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"pass the downloaded file as --encoder resnet50=/path/to/file", err)
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_multilabel_study_level_task_through_the_python_api(tmp_path):
    from convirt.data.labelled import read_labelled_manifest
    from convirt.evaluation.classification import ClassificationSettings, Recipe, evaluate_classification

    rng = np.random.default_rng(5)
    rows = []
    for k in range(36):  # 18 studies of 2 images; labels per study
        study = k // 2
        split = "train" if study < 10 else "val" if study < 14 else "test"
        a, b = study % 2, (study // 2) % 2
        pixels = np.clip(rng.normal(60 + 100 * a, 30, (16, 16)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"{k}.png")
        rows.append({"image": f"{k}.png", "patient_id": f"p{study}", "study_id": f"s{study}", "split": split,
                     "edema": str(a), "effusion": str(b)})  # fmt: skip
    task = LabelledTask(name="mini", kind="multilabel", class_names=["edema", "effusion"],
                        label_columns=["edema", "effusion"], scoring_level="study")  # fmt: skip
    path = write_labelled_manifest(pd.DataFrame(rows), tmp_path / "mini.csv", task)
    settings = ClassificationSettings(fractions=(0.5, 1.0), seeds=2, image_size=32, fast=False,
                                      training=Recipe(batch_size=8, max_epochs=3, lr=1e-3))  # fmt: skip
    runs = evaluate_classification(read_labelled_manifest(path), ["random:resnet18"], settings, tmp_path / "out")
    assert (runs["level"] == "study").all() and (runs["n_test"] == 8).all() and (runs["n_test_scored"] == 4).all()
    assert {"test_auc_edema", "test_auc_effusion"} <= set(runs.columns)
    assert np.allclose(runs["test"], runs[["test_auc_edema", "test_auc_effusion"]].mean(axis=1))
    assert (runs[runs["fraction"] == 0.5]["n_train"] % 2 == 0).all()  # whole studies
    assert "mean AUC" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "roc" / "random_resnet18-0.5.png").is_file()


def test_a_killed_evaluation_resumes_run_by_run(tmp_path):
    """Interrupted after its second run, the evaluation continues with the third; a new fraction trains only its
    own runs; another setting reuses nothing. Results equal an uninterrupted evaluation's."""
    from convirt.data.sources import load_labelled_dataset
    from convirt.evaluation.classification import ClassificationSettings, Recipe, evaluate_classification

    manifest = load_labelled_dataset(f"imagefolder:{write_image_folder(tmp_path / 'data')}", val_size=0.25)

    def settings(fractions, lr=1e-3):
        return ClassificationSettings(fractions=fractions, seeds=2, image_size=32, fast=False,
                                      training=Recipe(batch_size=8, max_epochs=3, lr=lr))  # fmt: skip

    straight = evaluate_classification(manifest, ["random:resnet18"], settings((0.25, 1.0)), tmp_path / "straight")

    class Killed(Exception):
        pass

    def kill_after_second_run(message: str) -> None:
        if message.startswith("random:resnet18 25 % seed 1:"):
            raise Killed

    out = tmp_path / "out"
    with pytest.raises(Killed):
        evaluate_classification(manifest, ["random:resnet18"], settings((0.25, 1.0)), out, log=kill_after_second_run)
    assert len(pd.read_csv(out / "runs.csv")) == 2 and len(list((out / "predictions").glob("*.npy"))) == 2
    assert not (out / "summary.md").exists()

    messages: list[str] = []
    resumed = evaluate_classification(manifest, ["random:resnet18"], settings((0.25, 1.0)), out, log=messages.append)
    reused = [m for m in messages if m.endswith("finished earlier (runs.csv), reused")]
    trained = [m for m in messages if "best epoch" in m]
    assert [m.split(": ")[0] for m in reused] == ["random:resnet18 25 % seed 0", "random:resnet18 25 % seed 1"]
    assert [m.split(": ")[0] for m in trained] == ["random:resnet18 100 % seed 0", "random:resnet18 100 % seed 1"]
    assert resumed["run_key"].tolist() == straight["run_key"].tolist()
    for key in straight["run_key"]:  # each run's test probabilities, as an uninterrupted evaluation gives them
        expected = np.load(tmp_path / "straight" / "predictions" / f"{key}.npy")
        np.testing.assert_allclose(np.load(out / "predictions" / f"{key}.npy"), expected, rtol=1e-6)
    assert resumed["test"].tolist() == pytest.approx(straight["test"].tolist(), abs=1e-12)
    assert (out / "summary.md").read_text().split("Command")[0] == (tmp_path / "straight" / "summary.md").read_text()
    assert sorted(p.name for p in (out / "roc").iterdir()) == ["random_resnet18-0.25.png", "random_resnet18-1.png"]

    messages.clear()
    more = evaluate_classification(manifest, ["random:resnet18"], settings((0.25, 0.5, 1.0)), out, log=messages.append)
    assert len(more) == 6 and sum("best epoch" in m for m in messages) == 2  # only the two 50 % runs train
    messages.clear()
    evaluate_classification(manifest, ["random:resnet18"], settings((0.25,), lr=3e-4), out, log=messages.append)
    assert sum("best epoch" in m for m in messages) == 2 and not any("reused" in m for m in messages)
    assert len(pd.read_csv(out / "runs.csv")) == 2  # the rows of other settings are gone


def test_seeds_option_is_a_count_or_a_list():
    from convirt.cli.evaluate import _seeds

    assert _seeds("5") == 5
    assert _seeds("0,1,2") == [0, 1, 2]
    assert _seeds("2,") == [2]  # one seed, e.g. adding seed 2 to a finished 2-seed evaluation
    for bad in ("", ",", "0", "a,b"):
        with pytest.raises(Exception, match="seeds: a count"):
            _seeds(bad)
    # the command written to the result files keeps a list of one seed a list
    from convirt.cli import build_parser
    from convirt.cli.evaluate import classify_command_line

    for given, written in (("2,", "--seeds 2,"), ("0,1", "--seeds 0,1"), ("3", "--seeds 3")):
        args = build_parser().parse_args(["evaluate", "classify", "--dataset", "imagefolder:x", "--seeds", given])
        assert written in classify_command_line(args)
