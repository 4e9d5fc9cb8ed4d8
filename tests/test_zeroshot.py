"""Zero-shot classification: prompt files, class embeddings, metrics by hand, the command on real Kermany images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from convirt.cli import main
from convirt.cli.options import parse_prompt_map
from convirt.encoders.prompts import class_embeddings, read_prompts
from convirt.errors import ConfigError, ManifestError
from convirt.evaluation.zeroshot import evaluate_zeroshot, zero_shot_metrics, zero_shot_scores
from test_retrieval_support import LookupEmbedder, copy_kermany, one_hot, write_tiny_checkpoint


def test_prompt_files_csv_yaml_and_map(tmp_path: Path):
    csv = tmp_path / "prompts.csv"
    csv.write_text(
        "Variable,Text\nPneumonia,Pneumonia is present.\nNo Finding,The lungs are clear.\n"
        "Pneumonia, A fluffy opacity suggests pneumonia. \nEdema,Edema.\n"
    )
    assert read_prompts(csv) == {
        "Pneumonia": ["Pneumonia is present.", "A fluffy opacity suggests pneumonia."],
        "No Finding": ["The lungs are clear."],
        "Edema": ["Edema."],
    }
    mapping = parse_prompt_map(["NORMAL=No Finding", "PNEUMONIA=Pneumonia"])
    assert read_prompts(csv, mapping) == {
        "NORMAL": ["The lungs are clear."],
        "PNEUMONIA": ["Pneumonia is present.", "A fluffy opacity suggests pneumonia."],
    }
    yaml_file = tmp_path / "prompts.yaml"
    yaml_file.write_text("normal: [The chest is normal., No abnormalities are present.]\nabnormal: Edema.\n")
    assert read_prompts(yaml_file) == {
        "normal": ["The chest is normal.", "No abnormalities are present."],
        "abnormal": ["Edema."],
    }
    with pytest.raises(ConfigError, match="Cardiomegaly"):
        read_prompts(csv, {"X": "Cardiomegaly"})
    (tmp_path / "bad.csv").write_text("name,sentence\na,b\n")
    with pytest.raises(ManifestError, match="class column"):
        read_prompts(tmp_path / "bad.csv")


def test_library_errors_name_the_setting_and_the_command_line_adds_its_option(tmp_path: Path, capsys):
    csv = tmp_path / "prompts.csv"
    csv.write_text("label,text\nPneumonia,Pneumonia is present.\n")
    with pytest.raises(ConfigError) as error:
        read_prompts(csv, {"X": "Cardiomegaly"})
    assert error.value.setting == "prompt_map" and "--" not in str(error.value)
    args = ["evaluate", "zeroshot", "--dataset", str(tmp_path), "--prompts", str(csv), "--prompt-map", "X=Cardiomegaly"]
    assert main([*args, "--encoder", "random:resnet18", "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("(on the command line: --prompt-map CLASS=PROMPT_LABEL)") and len(err.splitlines()) == 1


def test_builtin_kermany_prompts_are_the_official_sentences(shared_data: Path):
    official = read_prompts(
        shared_data / "convirt-retrieval" / "text_query.csv", {"NORMAL": "No Finding", "PNEUMONIA": "Pneumonia"}
    )
    assert read_prompts("builtin:kermany") == official
    assert len(official["NORMAL"]) == len(official["PNEUMONIA"]) == 5


def test_class_embedding_is_the_normalised_mean_of_normalised_prompts():
    texts = {"a": torch.tensor([3.0, 0.0]), "b": torch.tensor([0.0, 0.5]), "c": torch.tensor([-1.0, 0.0])}
    embedder = LookupEmbedder({}, texts)
    classes, embeddings = class_embeddings(embedder, {"X": ["a", "b"], "Y": ["c"]})
    assert classes == ["X", "Y"]
    # mean of (1, 0) and (0, 1) = (0.5, 0.5) -> (0.7071, 0.7071)
    torch.testing.assert_close(embeddings, torch.tensor([[2**-0.5, 2**-0.5], [-1.0, 0.0]]))
    similarity, probabilities = zero_shot_scores(torch.tensor([[1.0, 0.0]]), embeddings, temperature=0.5)
    torch.testing.assert_close(similarity, torch.tensor([[2**-0.5, -1.0]]))
    expected = torch.softmax(torch.tensor([2**-0.5, -1.0]) / 0.5, dim=0)
    torch.testing.assert_close(probabilities[0], expected)


def test_metrics_match_hand_computation():
    # Scores for class B: positives (B) 0.9, 0.4; negatives (A) 0.6, 0.2, 0.1.
    # AUC(B) = pairs won by positives: 0.9 beats 3, 0.4 beats 2 -> 5 / 6. Predictions (argmax, B when > 0.5):
    # B, A | B, A, A -> accuracy 3/5; recall A = 2/3, recall B = 1/2 -> balanced 7/12.
    p_b = np.array([0.9, 0.4, 0.6, 0.2, 0.1])
    probabilities = np.stack([1 - p_b, p_b], axis=1)
    result = zero_shot_metrics(probabilities, ["B", "B", "A", "A", "A"], ["A", "B"])
    assert result.auc_per_class == pytest.approx({"A": 5 / 6, "B": 5 / 6})
    assert result.mean_auc == pytest.approx(5 / 6)
    assert result.accuracy == pytest.approx(3 / 5)
    assert result.balanced_accuracy == pytest.approx(7 / 12)
    assert result.confusion == [[2, 1], [1, 1]]
    with pytest.raises(ConfigError, match="without prompts"):
        zero_shot_metrics(probabilities, ["B", "B", "A", "A", "C"], ["A", "B"])


def test_perfect_encoder_classifies_everything():
    paths = [f"{i}.png" for i in range(6)]
    labels = ["NORMAL", "PNEUMONIA", "NORMAL", "COVID", "PNEUMONIA", "COVID"]
    names = ["NORMAL", "PNEUMONIA", "COVID"]
    images = {p: one_hot(names.index(y), 3) for p, y in zip(paths, labels)}
    prompts = {"NORMAL": ["n1", "n2"], "PNEUMONIA": ["p"], "COVID": ["c"]}
    texts = {"n1": one_hot(0, 3), "n2": one_hot(0, 3) * 2, "p": one_hot(1, 3), "c": one_hot(2, 3)}
    (result,) = evaluate_zeroshot([LookupEmbedder(images, texts)], paths, labels, prompts)
    assert result.accuracy == 1.0 and result.mean_auc == 1.0 and result.balanced_accuracy == 1.0
    assert result.confusion == [[2, 0, 0], [0, 2, 0], [0, 0, 2]]


def test_zeroshot_command_on_real_kermany_images(shared_data: Path, tiny_bert_dir: Path, tmp_path: Path):
    copy_kermany(shared_data, tmp_path / "kermany", per_class=6, split="test")
    copy_kermany(shared_data, tmp_path / "kermany", per_class=1, split="train")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "zeroshot",
            "--dataset",
            str(tmp_path / "kermany"),
            "--prompts",
            "builtin:kermany",
            "--encoder",
            str(checkpoint),
            "--no-fast",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    (result,) = metrics["results"]
    assert result["n_images"] == 12 and result["classes"] == ["NORMAL", "PNEUMONIA"]
    counts = np.array(result["confusion_matrix"]["counts"])
    assert counts.sum() == 12 and counts.sum(axis=1).tolist() == [6, 6]
    assert result["accuracy"] == pytest.approx(np.trace(counts) / 12)
    assert result["auc_per_class"]["NORMAL"] == pytest.approx(result["auc_per_class"]["PNEUMONIA"])  # binary
    assert "| ConVIRT | 12 |" in (out / "zeroshot.md").read_text()
