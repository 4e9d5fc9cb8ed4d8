"""t-SNE figures: seeded coordinates, side-by-side panels, and the command on real Kermany images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from convirt.analysis.tsne import TsnePanel, plot_tsne, tsne_2d
from convirt.cli import main
from test_retrieval_support import copy_kermany, write_tiny_checkpoint


def test_tsne_is_seeded_and_separates_two_well_separated_clusters():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(15, 8, generator=generator) * 0.05 + torch.eye(8)[0]
    b = torch.randn(15, 8, generator=generator) * 0.05 + torch.eye(8)[1]
    x = torch.cat([a, b])
    first, second = tsne_2d(x, seed=3, perplexity=5), tsne_2d(x, seed=3, perplexity=5)
    assert first.shape == (30, 2) and np.allclose(first, second)
    centre_a, centre_b = first[:15].mean(0), first[15:].mean(0)
    spread = max(
        np.linalg.norm(first[:15] - centre_a, axis=1).max(), np.linalg.norm(first[15:] - centre_b, axis=1).max()
    )
    assert np.linalg.norm(centre_a - centre_b) > spread


def test_plot_writes_png_and_coordinates(tmp_path: Path):
    coordinates = np.arange(12, dtype=np.float32).reshape(6, 2)
    labels = ["A", "B", "C", "A", "B", "C"]
    panels = [TsnePanel("ImageNet", coordinates, labels), TsnePanel("ConVIRT", -coordinates, labels)]
    files = plot_tsne(panels, tmp_path / "tsne.png", categories=["A", "B", "C"])
    with Image.open(files["png"]) as figure:
        assert figure.format == "PNG" and figure.size[0] > 1.5 * figure.size[1]  # two panels side by side
    table = pd.read_csv(files["csv"])
    assert len(table) == 12 and table.groupby("panel").size().to_dict() == {"ConVIRT": 6, "ImageNet": 6}


def test_tsne_command_two_encoders_on_real_images(shared_data: Path, tiny_bert_dir: Path, tmp_path: Path):
    copy_kermany(shared_data, tmp_path / "kermany", per_class=1, split="train")
    copy_kermany(shared_data, tmp_path / "kermany", per_class=5, split="test")
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    output = tmp_path / "tsne.png"
    assert (
        main(
            [
                "plot",
                "tsne",
                "--dataset",
                str(tmp_path / "kermany"),
                "--encoder",
                "random:resnet18",
                "--encoder",
                str(checkpoint),
                "--image-size",
                "64",
                "--max-per-class",
                "4",
                "-o",
                str(output),
            ]
        )
        == 0
    )
    table = pd.read_csv(output.with_suffix(".csv"))
    assert table.groupby("panel").size().to_dict() == {"ConVIRT (h_v)": 8, "random init (resnet18) (h_v)": 8}
    assert table.groupby("label").size().to_dict() == {"NORMAL": 8, "PNEUMONIA": 8}
