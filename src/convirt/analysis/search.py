"""Embedding search over a folder of images: ``convirt index`` and ``convirt search``.

**Index file** (``torch.save`` of a plain dict, read back with ``weights_only=True``: a file holding anything else
is refused): format version, the image root, the image paths relative to it (sorted), each file's size and
modification time, the L2-normalised embeddings (N, d) float32, the embedding space (``v`` for ConVIRT checkpoints
so that text queries work, else ``h_v``), the encoder specification and the fingerprint of its weights
(:func:`convirt.encoders.embedders.encoder_fingerprint`), the images that could not be read (path and reason),
when it was written, and optionally each image's labels (from a labelled dataset: :func:`image_labels
<convirt.data.sources.image_labels>`; an index without labels stores none).
Searching with the index's own encoder loads the file its specification names, through the same safe loaders.

**Resumable and incremental.** While indexing, every ``chunk_size`` embedded images are written as one part file
under ``INDEX.parts/`` (atomic writes). A rerun after an interruption loads the parts made with the same encoder
and space and embeds only what is left; re-indexing a folder also reuses the embeddings of the previous index for
files whose size and modification time are unchanged. The parts folder is removed once the index is written.

**Search** is exact: cosine similarity (dot product of normalised vectors) of the query against every vector and
top-k, with torch on CPU by default; ``backend="faiss"`` uses a FAISS ``IndexFlatIP`` when ``faiss`` is installed
(``pip install faiss-cpu``; optional).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from convirt.data.images import is_dicom
from convirt.encoders.embedders import Embedder, load_embedder
from convirt.encoders.spec import EncoderSpec
from convirt.errors import ConfigError, ConvirtError, ImageLoadError
from convirt.fileio import atomic_torch_save, load_torch_file

INDEX_FORMAT = 2  # 2: the fingerprint hashes the encoder's weights (1: its specification and file times)
READABLE_FORMATS = (1, INDEX_FORMAT)
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".gif", ".webp")
BACKENDS = ("torch", "faiss")


class IndexFileError(ConvirtError):
    """An index file is missing, foreign, or inconsistent with the request."""


class EncoderMismatchError(ConvirtError):
    """The encoder asked for is not the one that built an index."""


def find_images(folder: str | os.PathLike) -> list[str]:
    """Image files under ``folder`` (recursive, sorted, relative paths): known extensions, and extension-less
    DICOM files. Hidden files and folders are skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise ConfigError(f"image folder {root} does not exist")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            suffix = path.suffix.lower()
            if suffix in IMAGE_EXTENSIONS or (not suffix and is_dicom(path)):
                found.append(path.relative_to(root).as_posix())
    return sorted(found)


def _file_stat(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


@dataclass
class ImageIndex:
    root: str
    paths: list[str]
    embeddings: torch.Tensor  # (N, d) float32, L2-normalised
    space: str
    encoder_spec: str
    fingerprint: str
    seed: int = 0
    image_size: int = 224
    stats: list[tuple[int, int]] = field(default_factory=list)  # (size, mtime_ns) per path
    failed: list[tuple[str, str]] = field(default_factory=list)  # (relative path, reason)
    labels: list[list[str]] = field(default_factory=list)  # per path (an unlabelled image: []), or [] for none
    label_source: str = ""  # the labelled dataset the labels come from
    built: str = ""  # when the index was written (ISO 8601, UTC)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def label_names(self) -> list[str]:
        """Every label an image of the index has (sorted); empty for an index without labels."""
        return sorted({label for row in self.labels for label in row})

    def absolute(self, relative: str) -> str:
        return str(Path(self.root) / relative)

    def to_dict(self) -> dict:
        return {
            "format": "convirt-image-index",
            "format_version": INDEX_FORMAT,
            "root": self.root,
            "paths": list(self.paths),
            "stats": [list(s) for s in self.stats],
            "embeddings": self.embeddings.float().contiguous(),
            "space": self.space,
            "encoder_spec": self.encoder_spec,
            "fingerprint": self.fingerprint,
            "seed": self.seed,
            "image_size": self.image_size,
            "failed": [list(f) for f in self.failed],
            "labels": [list(row) for row in self.labels],
            "label_source": self.label_source,
            "built": self.built,
        }

    def save(self, path: str | os.PathLike) -> Path:
        atomic_torch_save(self.to_dict(), path)
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageIndex:
        file = Path(path)
        if not file.is_file():
            raise IndexFileError(f"index {file} does not exist; build one from an image folder first", setting="index")
        data = load_torch_file(file, "index", error=IndexFileError)
        if not isinstance(data, dict) or data.get("format") != "convirt-image-index":
            raise IndexFileError(f"{file} is not a convirt image index")
        if data.get("format_version") not in READABLE_FORMATS:
            raise IndexFileError(f"index {file} has format {data.get('format_version')}; rebuild it with this version")
        try:
            index = cls(
                root=str(data["root"]),
                paths=[str(p) for p in data["paths"]],
                embeddings=data["embeddings"],
                space=str(data["space"]),
                encoder_spec=str(data["encoder_spec"]),
                fingerprint=str(data["fingerprint"]) if data["format_version"] == INDEX_FORMAT else "",  # 1: n/a
                seed=int(data.get("seed", 0)),
                image_size=int(data.get("image_size", 224)),
                stats=[tuple(s) for s in data.get("stats", [])],
                failed=[tuple(f) for f in data.get("failed", [])],
                labels=[[str(label) for label in row] for row in data.get("labels", [])],
                label_source=str(data.get("label_source", "")),
                built=str(data.get("built", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise IndexFileError(f"index {file} is incomplete or damaged ({type(exc).__name__}: {exc})") from exc
        embeddings = index.embeddings
        if not isinstance(embeddings, torch.Tensor) or embeddings.ndim != 2 or embeddings.shape[0] != len(index.paths):
            raise IndexFileError(f"index {file} is damaged: its embeddings do not match its {len(index.paths)} paths")
        if index.labels and len(index.labels) != len(index.paths):
            rows = f"{len(index.labels)} label rows for {len(index.paths)} paths"
            raise IndexFileError(f"index {file} is damaged: {rows}")
        return index


def parts_dir(index_path: str | os.PathLike) -> Path:
    path = Path(index_path)
    return path.with_name(path.name + ".parts")


def _load_reusable(
    index_path: Path, fingerprint: str, space: str, root: Path, restart: bool
) -> tuple[dict[str, tuple[tuple[int, int], torch.Tensor | None, str]], int]:
    """Embeddings already made with this encoder and space: {relative path: (stat, embedding or None, reason)}."""
    reusable: dict[str, tuple[tuple[int, int], torch.Tensor | None, str]] = {}
    parts = parts_dir(index_path)
    if restart:
        shutil.rmtree(parts, ignore_errors=True)
        return reusable, 0
    if index_path.is_file():
        try:
            old = ImageIndex.load(index_path)
        except IndexFileError:
            old = None
        if old and old.fingerprint == fingerprint and old.space == space and Path(old.root) == root:
            for i, rel in enumerate(old.paths):
                reusable[rel] = (tuple(old.stats[i]), old.embeddings[i], "")
    n_parts = 0
    if parts.is_dir():
        for part_file in sorted(parts.glob("part-*.pt")):
            part = load_torch_file(part_file, "partial index", error=IndexFileError)
            if part["fingerprint"] != fingerprint or part["space"] != space or part["root"] != str(root):
                raise IndexFileError(
                    f"{parts} holds a partial index made with another encoder, space or folder; delete it or "
                    "restart the indexing from scratch",
                    setting="restart",
                )
            for rel, stat, vector in zip(part["paths"], part["stats"], part["embeddings"]):
                reusable[rel] = (tuple(stat), vector, "")
            for rel, stat, reason in part["failed"]:
                reusable[rel] = (tuple(stat), None, reason)
            n_parts += 1
    return reusable, n_parts


def build_index(
    image_dir: str | os.PathLike | None,
    encoder: str | Embedder,
    output: str | os.PathLike,
    space: str | None = None,
    batch_size: int = 32,
    chunk_size: int = 512,
    restart: bool = False,
    seed: int = 0,
    progress: bool | Callable[[int], None] = True,
    images: Sequence[str | os.PathLike] | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_source: str = "",
    only_labelled: bool = False,
) -> ImageIndex:
    """Embed every image under ``image_dir`` into an index file at ``output`` (see the module docstring).

    ``images``: index these files instead (e.g. a labelled dataset's split); the index's root is then their
    deepest common folder (``image_dir`` is ignored).

    ``encoder`` is an encoder specification (see :mod:`convirt.encoders.spec`) or a loaded embedder (then its
    ``spec`` is stored). ``progress``: True for a progress bar, or a callable given the number of images done
    after each batch. Unreadable images are listed in the index (``failed``) and skipped.

    ``labels``: {resolved image path: labels} (:func:`convirt.data.sources.image_labels`), stored per image
    (``label_source`` names where they come from); with ``only_labelled`` the images it does not list are left out.
    """
    output = Path(output)
    if images is not None:
        files = [Path(p).resolve() for p in images]
        if not files:
            raise ConfigError("no images to index")
        root = Path(os.path.commonpath([str(f.parent) for f in files]))
        relative = sorted({f.relative_to(root).as_posix() for f in files})
    else:
        if image_dir is None:
            raise ConfigError("give an image folder or a list of images to index")
        root = Path(image_dir).resolve()
        relative = find_images(root)
    if not relative:
        raise ConfigError(f"no image files under {root} (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    if labels is not None:
        keys = {rel: str((root / rel).resolve()) for rel in relative}
        if not any(keys[rel] in labels for rel in relative):
            raise ConfigError(
                f"none of the {len(relative)} images under {root} is in the labelled dataset {label_source or ''}; "
                "give the folder its images are in",
                setting="labels",
            )
        if only_labelled:
            relative = [rel for rel in relative if keys[rel] in labels]
    embedder = load_embedder(encoder, seed=seed) if isinstance(encoder, str) else encoder
    space = space or ("v" if "v" in embedder.spaces else "h_v")
    embedder.check_spaces([space])
    fingerprint = embedder.fingerprint
    reusable, n_parts = _load_reusable(output, fingerprint, space, root, restart)
    stats = {rel: _file_stat(root / rel) for rel in relative}
    todo = [rel for rel in relative if rel not in reusable or reusable[rel][0] != stats[rel]]

    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(relative), initial=len(relative) - len(todo), unit="img", desc="indexing")
    parts = parts_dir(output)
    for start in range(0, len(todo), chunk_size):
        chunk = todo[start : start + chunk_size]
        done_paths, done_vectors, failed = [], [], []
        for batch_start in range(0, len(chunk), batch_size):
            batch = chunk[batch_start : batch_start + batch_size]
            tensors, kept = [], []
            for rel in batch:
                try:
                    tensors.append(embedder.preprocess(root / rel))
                    kept.append(rel)
                except ImageLoadError as exc:
                    failed.append((rel, list(stats[rel]), exc.reason))
            if tensors:
                vectors = embedder.embed_images(tensors, [space], batch_size=batch_size)[space]
                done_paths += kept
                done_vectors.append(vectors)
            if bar is not None:
                bar.update(len(batch))
            elif callable(progress):
                progress(len(batch))
        part = {
            "fingerprint": fingerprint,
            "space": space,
            "root": str(root),
            "paths": done_paths,
            "stats": [list(stats[r]) for r in done_paths],
            "embeddings": torch.cat(done_vectors) if done_vectors else torch.empty(0, 0),
            "failed": failed,
        }
        atomic_torch_save(part, parts / f"part-{n_parts:06d}.pt")
        n_parts += 1
        for rel, vector in zip(done_paths, part["embeddings"]):
            reusable[rel] = (stats[rel], vector, "")
        for rel, _, reason in failed:
            reusable[rel] = (stats[rel], None, reason)
    if bar is not None:
        bar.close()

    kept = [rel for rel in relative if reusable[rel][1] is not None]
    dim = next((reusable[rel][1].shape[0] for rel in kept), 0)
    index = ImageIndex(
        root=str(root),
        paths=kept,
        embeddings=torch.stack([reusable[rel][1] for rel in kept]).float() if kept else torch.empty(0, dim),
        space=space,
        encoder_spec=EncoderSpec.parse(embedder.spec).resolved().text,
        fingerprint=fingerprint,
        seed=seed,
        image_size=int(embedder.image_size),
        stats=[stats[rel] for rel in kept],
        failed=[(rel, reusable[rel][2]) for rel in relative if reusable[rel][1] is None],
        labels=[list(labels.get(keys[rel], ())) for rel in kept] if labels is not None else [],
        label_source=label_source if labels is not None else "",
        built=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    index.save(output)
    shutil.rmtree(parts, ignore_errors=True)
    return index


# ---------------------------------------------------------------------------------------------------------------
# Search


class TorchSearch:
    """Exact inner-product search with torch (CPU by default)."""

    def __init__(self, embeddings: torch.Tensor, device: str | torch.device = "cpu") -> None:
        self.embeddings = embeddings.float().contiguous().to(device)

    def search(
        self, queries: torch.Tensor, k: int, allowed: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores and rows of the ``k`` best vectors for each query; ``allowed``: a boolean mask of the rows that
        may be returned (default all)."""
        scores = queries.float().to(self.embeddings.device) @ self.embeddings.T
        count = self.embeddings.shape[0]
        if allowed is not None:
            scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
            count = int(allowed.sum())
        top = scores.topk(min(k, count), dim=1)
        return top.values.cpu(), top.indices.cpu()


class FaissSearch:
    """Exact inner-product search with FAISS (``IndexFlatIP``); needs ``pip install faiss-cpu``."""

    def __init__(self, embeddings: torch.Tensor) -> None:
        try:
            import faiss
        except ImportError as exc:
            raise ConfigError(
                "the FAISS backend needs faiss: pip install faiss-cpu (or use the torch backend)", setting="backend"
            ) from exc
        self.index = faiss.IndexFlatIP(embeddings.shape[1])
        self.index.add(embeddings.float().contiguous().numpy())

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        scores, indices = self.index.search(queries.float().contiguous().numpy(), min(k, self.index.ntotal))
        return torch.from_numpy(scores), torch.from_numpy(indices).long()


def make_backend(embeddings: torch.Tensor, backend: str = "torch"):
    if backend == "torch":
        return TorchSearch(embeddings)
    if backend == "faiss":
        return FaissSearch(embeddings)
    raise ConfigError(f"unknown search backend {backend!r}; use {' or '.join(BACKENDS)}")


@dataclass
class SearchHit:
    rank: int
    path: str  # absolute
    score: float  # cosine similarity


def search_index(
    index: ImageIndex,
    text: str | None = None,
    image: str | os.PathLike | None = None,
    k: int = 10,
    embedder: Embedder | None = None,
    backend: str = "torch",
) -> list[SearchHit]:
    """The ``k`` images of ``index`` most similar to a text query or a query image."""
    if (text is None) == (image is None):
        raise ConfigError("give exactly one query: a text or an image")
    if k < 1:
        raise ConfigError("k must be at least 1")
    if len(index) == 0:
        raise IndexFileError("the index holds no images")
    embedder = embedder or embedder_for_index(index)
    if text is not None:
        if index.space != "v" or not embedder.has_text:
            raise ConfigError(
                f"text search needs an index in the shared space v built with a ConVIRT checkpoint; this index is "
                f"in {index.space} ({index.encoder_spec})"
            )
        query = embedder.embed_texts([text])
    else:
        query = embedder.embed_images([image], [index.space])[index.space]
    scores, indices = make_backend(index.embeddings, backend).search(F.normalize(query.float(), dim=-1), k)
    return [
        SearchHit(rank + 1, index.absolute(index.paths[int(i)]), float(s))
        for rank, (s, i) in enumerate(zip(scores[0], indices[0]))
    ]


def embedder_for_index(index: ImageIndex, override: str | None = None, strict: bool = False) -> Embedder:
    """The encoder that built ``index`` (or ``override``), warning when its weights changed since.

    ``strict``: an encoder whose weights are not those that built the index (the stored one changed on disk, or an
    ``override`` that is another encoder) raises :class:`EncoderMismatchError` instead: its queries would be
    compared with the index's embeddings in another space.
    """
    spec = override or index.encoder_spec
    embedder = load_embedder(spec, seed=index.seed, image_size=index.image_size)
    if (override is None or strict) and index.fingerprint and embedder.fingerprint != index.fingerprint:
        if override is not None:
            raise EncoderMismatchError(
                f"{override} is not the encoder that built the index ({index.encoder_spec}): its image embeddings "
                "differ from the index's, so queries would be compared in another space; use the index's own "
                "encoder, or rebuild the index with this one",
            )
        message = f"the encoder {spec} changed since the index was built; rebuild the index for consistent results"
        if strict:
            raise EncoderMismatchError(message, setting="index")
        import warnings

        warnings.warn(message, stacklevel=2)
    return embedder


def time_search(embeddings: torch.Tensor, queries: torch.Tensor, k: int, backend: str = "torch") -> float:
    """Seconds to answer ``queries`` one at a time (for the benchmark)."""
    engine = make_backend(embeddings, backend)
    start = time.perf_counter()
    for q in queries:
        engine.search(q[None], k)
    return time.perf_counter() - start


def format_hits(hits: Sequence[SearchHit]) -> str:
    width = max((len(str(h.rank)) for h in hits), default=1)
    return "\n".join(f"{h.rank:>{width}}  {h.score:+.4f}  {h.path}" for h in hits)
