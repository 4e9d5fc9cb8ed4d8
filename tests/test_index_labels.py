"""`convirt index --labels DATASET [--split S]`: each image's labels from a labelled dataset, stored in the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from convirt.analysis.search import ImageIndex, IndexFileError
from convirt.cli import main
from convirt.data.sources import image_labels

# image -> (split, Effusion, Pneumonia); e.png is in the folder but not in the manifest
ROWS = {"a.png": ("train", 1, 0), "b.png": ("test", 1, 1), "c.png": ("test", 0, 0), "d.png": ("test", 0, 1)}


@pytest.fixture()
def labelled_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [*ROWS, "e.png"]:
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(folder / name)
    lines = ["image,patient_id,study_id,split,Effusion,Pneumonia"]
    lines += [f"images/{name},p{i},s{i},{split},{e},{p}" for i, (name, (split, e, p)) in enumerate(ROWS.items())]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return folder


def _index(args: list[str], tmp_path: Path) -> ImageIndex:
    output = tmp_path / "out.index.pt"
    assert main(["index", *args, "--encoder", "random:resnet18", "-o", str(output), "--no-progress"]) == 0
    return ImageIndex.load(output)


def test_image_labels_gives_every_positive_label_of_a_multilabel_dataset(labelled_folder, tmp_path):
    labels = image_labels(tmp_path / "labels.csv", "test")
    assert labels == {
        str((labelled_folder / "b.png").resolve()): ["Effusion", "Pneumonia"],
        str((labelled_folder / "c.png").resolve()): [],
        str((labelled_folder / "d.png").resolve()): ["Pneumonia"],
    }


def test_index_with_a_split_keeps_only_that_split_with_its_labels(labelled_folder, tmp_path, capsys):
    manifest = tmp_path / "labels.csv"
    index = _index([str(labelled_folder), "--labels", str(manifest), "--split", "test"], tmp_path)
    assert index.paths == ["b.png", "c.png", "d.png"]
    assert index.labels == [["Effusion", "Pneumonia"], [], ["Pneumonia"]]
    assert index.label_names == ["Effusion", "Pneumonia"]
    assert index.label_source == f"{manifest} (test split)"
    assert index.built.endswith("+00:00")  # when it was written, UTC
    assert "labels: 2 of 3 images, 2 label names" in capsys.readouterr().out


def test_index_without_a_split_labels_the_listed_images_and_keeps_the_others(labelled_folder, tmp_path):
    index = _index([str(labelled_folder), "--labels", str(tmp_path / "labels.csv")], tmp_path)
    assert index.paths == ["a.png", "b.png", "c.png", "d.png", "e.png"]
    assert index.labels == [["Effusion"], ["Effusion", "Pneumonia"], [], ["Pneumonia"], []]
    plain = _index([str(labelled_folder)], tmp_path)
    assert plain.labels == [] and plain.label_names == [] and plain.label_source == ""


def test_labels_that_name_no_image_of_the_folder_and_a_split_without_labels_are_refused(
    labelled_folder, tmp_path, capsys
):
    other = tmp_path / "other"
    other.mkdir()
    Image.new("L", (40, 40), 128).save(other / "x.png")
    output = str(tmp_path / "x.index.pt")
    assert main(["index", str(other), "--encoder", "random:resnet18", "--labels", str(tmp_path / "labels.csv"),
                 "-o", output, "--no-progress"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "none of the 1 images under" in err and "(on the command line: --labels DATASET)" in err
    assert main(["index", str(other), "--encoder", "random:resnet18", "--split", "test", "-o", output]) == 2
    assert "give it with --labels DATASET" in capsys.readouterr().err
    assert not Path(output).exists()


def test_an_index_written_before_labels_existed_loads_without_them_and_damaged_labels_are_refused(tmp_path):
    index = ImageIndex("/data", ["a.png", "b.png"], torch.eye(2), "h_v", "random:resnet18", "abc")
    data = index.to_dict()
    for key in ("labels", "label_source", "built"):
        del data[key]
    torch.save(data, tmp_path / "old.pt")
    old = ImageIndex.load(tmp_path / "old.pt")
    assert old.labels == [] and old.built == "" and old.paths == ["a.png", "b.png"]
    torch.save({**index.to_dict(), "labels": [["x"]]}, tmp_path / "bad.pt")
    with pytest.raises(IndexFileError, match="1 label rows for 2 paths"):
        ImageIndex.load(tmp_path / "bad.pt")
