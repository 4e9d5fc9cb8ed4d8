"""t-SNE of image embeddings coloured by category, encoders side by side (the paper's Figure 3: ImageNet vs
ConVIRT on CheXpert 8x200 candidate images).

:func:`tsne_2d` wraps scikit-learn's (Barnes-Hut) t-SNE on cosine distances (the embeddings are
compared by cosine everywhere else too), seeded; :func:`plot_tsne` draws one panel per encoder with a shared
legend. The coordinates are written next to the PNG as CSV so the figure can be redrawn.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from convirt.encoders.embedders import Embedder
from convirt.errors import ConfigError
from convirt.fileio import atomic_open, atomic_write_bytes


@dataclass
class TsnePanel:
    title: str
    coordinates: np.ndarray  # (N, 2)
    labels: list[str]
    paths: list[str] | None = None


def tsne_2d(embeddings: torch.Tensor | np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE coordinates of (N, d) embeddings (cosine metric); perplexity is capped below N / 3."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ConfigError(f"t-SNE needs at least 4 embeddings, got {x.shape[0] if x.ndim else 0}")
    perplexity = float(min(perplexity, max(1.0, (len(x) - 1) / 3.0)))
    model = TSNE(n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed)
    return model.fit_transform(x).astype(np.float32)


def tsne_panels(
    embedders: Sequence[Embedder],
    paths: Sequence[str | os.PathLike],
    labels: Sequence[str],
    space: str = "h_v",
    seed: int = 0,
    perplexity: float = 30.0,
    batch_size: int = 32,
) -> list[TsnePanel]:
    """Embed ``paths`` with each encoder (in ``space``, or ``h_v`` for encoders without it) and run t-SNE."""
    panels = []
    for embedder in embedders:
        chosen = space if space in embedder.spaces else "h_v"
        embeddings = embedder.embed_images(list(paths), [chosen], batch_size)[chosen]
        coordinates = tsne_2d(embeddings, seed=seed, perplexity=perplexity)
        panels.append(TsnePanel(f"{embedder.label} ({chosen})", coordinates, list(labels), [str(p) for p in paths]))
    return panels


def plot_tsne(
    panels: Sequence[TsnePanel],
    output: str | os.PathLike,
    categories: Sequence[str] | None = None,
    title: str | None = None,
    point_size: float = 9.0,
    dpi: int = 150,
) -> dict[str, Path]:
    """Side-by-side scatter plots (one per panel, same colours per category) -> PNG and coordinates CSV."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ConfigError("nothing to plot: no t-SNE panels")
    categories = list(categories or sorted({c for p in panels for c in p.labels}))
    colours = plt.get_cmap("tab10" if len(categories) <= 10 else "tab20")
    figure, axes = plt.subplots(1, len(panels), figsize=(5.0 * len(panels), 5.0), squeeze=False)
    for axis, panel in zip(axes[0], panels):
        labels = np.asarray(panel.labels)
        for i, category in enumerate(categories):
            mask = labels == category
            axis.scatter(
                panel.coordinates[mask, 0],
                panel.coordinates[mask, 1],
                s=point_size,
                color=colours(i),
                label=f"{category} ({int(mask.sum())})",
                alpha=0.8,
                linewidths=0,
            )
        axis.set_title(panel.title)
        axis.set_xticks([])
        axis.set_yticks([])
    handles, names = axes[0][0].get_legend_handles_labels()
    figure.legend(handles, names, loc="lower center", ncol=min(len(categories), 5), frameon=False, markerscale=2)
    if title:
        figure.suptitle(title)
    figure.tight_layout(rect=(0, 0.08 + 0.04 * ((len(categories) - 1) // 5), 1, 1))
    output = Path(output)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    plt.close(figure)
    atomic_write_bytes(output, buffer.getvalue())
    csv_path = output.with_suffix(".csv")
    frame = pd.concat(
        [
            pd.DataFrame(
                {
                    "panel": p.title,
                    "label": p.labels,
                    "x": p.coordinates[:, 0],
                    "y": p.coordinates[:, 1],
                    **({"path": p.paths} if p.paths else {}),
                }
            )
            for p in panels
        ]
    )
    with atomic_open(csv_path) as handle:
        frame.to_csv(handle, index=False)
    return {"png": output, "csv": csv_path}
