"""Every command that reads a labelled dataset takes the labelled adapters' options (one shared block,
`convirt.cli.options.add_dataset_options`): a hospital's CSV with its own column names and its own split column
is used as it is. Retrieval on a set with fewer candidates per query than its default cut-offs reports the ones
that fit and names the others.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from convirt.analysis.search import ImageIndex
from convirt.cli import main
from convirt.errors import ConfigError
from convirt.evaluation.retrieval import fitting_cutoffs
from test_retrieval_support import write_tiny_checkpoint

CLASSES = ("effusion", "normal", "pneumonia")
PER_CLASS = {"train": 3, "valid": 1, "test": 8}  # the table's own fold names


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """``hospital.csv``: columns file, finding, fold, mrn (none of the adapter's default names); 8 test images per
    class, so 23 candidates per leave-one-out query."""
    root = tmp_path_factory.mktemp("hospital")
    rng = np.random.default_rng(0)
    rows = []
    for fold, count in PER_CLASS.items():
        for c, finding in enumerate(CLASSES):
            for k in range(count):
                name = f"scans/{fold}-{finding}-{k}.png"
                (root / "scans").mkdir(exist_ok=True)
                pixels = np.clip(rng.normal(50 + 70 * c, 20, (24, 24)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(root / name)
                rows.append({"file": name, "finding": finding, "fold": fold, "mrn": f"{fold}{finding}{k}"})
    pd.DataFrame(rows).to_csv(root / "hospital.csv", index=False)
    return root / "hospital.csv"


def table_options(table: Path, split: str = "test") -> list[str]:
    return ["--dataset", f"csv:{table}", "--split", split, "--split-column", "fold", "--image-column", "file",
            "--label-columns", "finding", "--patient-column", "mrn"]  # fmt: skip


def test_retrieval_uses_the_tables_split_and_reports_the_cutoffs_that_fit(hospital, tmp_path, capsys):
    out = tmp_path / "retrieval"
    code = main(["evaluate", "retrieval", *table_options(hospital), "--encoder", "random:resnet18", "--no-fast",
                 "--image-size", "32", "-o", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_images"] == 24 and metrics["data"]["images_per_class"] == dict.fromkeys(CLASSES, 8)
    assert metrics["ks"] == [5, 10]
    assert metrics["data"]["dropped_cutoffs"] == {"ks": [50, 100], "candidates_per_query": 23}
    note = "Precision@50, Precision@100 are not reported: 23 candidates per query."
    assert note in printed and note in (out / "retrieval.md").read_text()

    # Cut-offs asked for are kept; one that does not fit is an error that names it.
    code = main(["evaluate", "retrieval", *table_options(hospital), "--encoder", "random:resnet18", "--no-fast",
                 "--image-size", "32", "--k", "5", "30", "-o", str(tmp_path / "k")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "Precision@30 needs at least 30 candidates per query; there are 23" in err


def test_fitting_cutoffs():
    assert fitting_cutoffs(None, 1600) == ((5, 10, 50, 100), ())
    assert fitting_cutoffs(None, 59) == ((5, 10, 50), (100,))
    assert fitting_cutoffs(None, 5) == ((5,), (10, 50, 100))
    assert fitting_cutoffs([1, 3], 2) == ((1, 3), ())  # asked for: kept (precision_at_k refuses 3)
    with pytest.raises(ConfigError, match="4 candidate"):
        fitting_cutoffs(None, 4)


def test_zeroshot_uses_the_tables_split(hospital, tiny_bert_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    pd.DataFrame({"label": CLASSES, "text": ["Pleural effusion.", "The lungs are clear.", "Consolidation."]}).to_csv(
        prompts, index=False
    )
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    out = tmp_path / "zeroshot"
    code = main(["evaluate", "zeroshot", *table_options(hospital), "--prompts", str(prompts), "--encoder",
                 str(checkpoint), "--no-fast", "-o", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (result,) = json.loads((out / "metrics.json").read_text())["results"]
    assert result["n_images"] == 24 and result["classes"] == list(CLASSES)


def test_tsne_uses_the_tables_split(hospital, tmp_path):
    out = tmp_path / "tsne.png"
    code = main(["plot", "tsne", *table_options(hospital, "train"), "--encoder", "random:resnet18", "--no-fast",
                 "--image-size", "32", "--perplexity", "3", "-o", str(out)])  # fmt: skip
    assert code == 0 and out.is_file()
    points = pd.read_csv(out.with_suffix(".csv"))
    assert len(points) == 9 and sorted(points["label"].unique()) == list(CLASSES)
    assert all("/train-" in path for path in points["path"])


def test_index_of_the_tables_split(hospital, tmp_path):
    output = tmp_path / "test.index.pt"
    code = main(["index", *table_options(hospital, "val"), "--encoder", "random:resnet18", "--no-progress",
                 "-o", str(output)])  # fmt: skip
    assert code == 0
    index = ImageIndex.load(output)
    assert index.root == str(hospital.parent / "scans")
    assert index.paths == [f"valid-{c}-0.png" for c in CLASSES]
    code = main(["index", str(hospital.parent), *table_options(hospital), "--encoder", "random:resnet18"])
    assert code == 2  # a folder or a dataset, not both


def test_classify_takes_the_same_block(hospital, tmp_path, capsys):
    manifest = tmp_path / "labelled.csv"
    code = main(["evaluate", "classify", *table_options(hospital)[:2], *table_options(hospital)[4:],
                 "--save-manifest", str(manifest)])  # fmt: skip
    assert code == 0
    assert "'train': 9, 'val': 3, 'test': 24" in capsys.readouterr().out
