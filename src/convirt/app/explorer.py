"""What the explorer does, independent of the web framework: one loaded index, its encoder, and the queries.

:class:`Explorer` loads an index (:class:`convirt.analysis.search.ImageIndex`, read safely) and the encoder that
built it (or ``checkpoint``, which must be that same encoder: :func:`embedder_for_index` with ``strict``). Either
may fail: the explorer then keeps the message and answers what it still can (a bad index: nothing; no usable
encoder: searches by an indexed image, which need only the stored embeddings), and every request it cannot
answer raises a :class:`RequestError` whose message the page shows.

**What it reads.** Images are named by their row in the index, never by a path. A row's file is served only when
it resolves (symbolic links followed) inside the indexed folder, and only decoded and re-encoded as a PNG by
:func:`convirt.data.images.load_image`: a symbolic link out of the folder, or a ``../`` or absolute path in a
crafted index, is refused. Uploads are size-limited, checked for their pixel count before decoding, decoded by the
same loader, and kept in a temporary folder that is removed on :meth:`Explorer.close`; nothing else is written.

**Model calls** (text and image embedding, Grad-CAM, zero-shot) run one at a time under a lock: Grad-CAM hooks the
image encoder's modules, and a concurrent forward pass would feed the hook.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from convirt.analysis.saliency import FINER, overlay, text_saliency
from convirt.analysis.search import ImageIndex, TorchSearch, embedder_for_index
from convirt.data.images import is_dicom, load_image, open_image
from convirt.encoders.embedders import Embedder
from convirt.encoders.prompts import class_embeddings, read_prompts
from convirt.errors import ConvirtError, ImageLoadError
from convirt.evaluation.zeroshot import zero_shot_scores
from convirt.fileio import atomic_write_bytes

DEFAULT_PROMPTS = "builtin:chexpert"
MAX_K = 100
MAX_QUERY_CHARS = 1000
MAX_UPLOAD_BYTES = 20 * 2**20
MAX_UPLOAD_PIXELS = 40_000_000  # larger than any radiograph (about 4300 x 3500); PIL's own limit is ~89 million
KEPT_UPLOADS = 32
THUMBNAIL_SIZES = (16, 1024)  # smallest and largest side a thumbnail may be asked for
SALIENCY_SIZE = 512  # longer side of a Grad-CAM overlay


class RequestError(ConvirtError):
    """A request the explorer cannot answer; the message is shown in the page. ``status``: the HTTP status."""

    status = 400


class NotFoundError(RequestError):
    status = 404


class RefusedError(RequestError):
    status = 403


class TooLargeError(RequestError):
    status = 413


class UnavailableError(RequestError):
    """The index or the encoder did not load, so this kind of request cannot be answered."""

    status = 503


@dataclass
class ExplorerSettings:
    index: Path
    checkpoint: str | None = None  # default: the encoder the index names
    prompts: str = DEFAULT_PROMPTS  # zero-shot classes (see convirt.encoders.prompts)
    saliency_layer: str | None = FINER  # Grad-CAM block (None: the last feature map)
    max_upload_bytes: int = MAX_UPLOAD_BYTES


@dataclass
class ImageRef:
    """A reference to a query image: an index row or an upload id (exactly one)."""

    row: int | None = None
    upload: str | None = None


class Explorer:
    def __init__(self, settings: ExplorerSettings) -> None:
        self.settings = settings
        self.lock = threading.Lock()
        self.index: ImageIndex | None = None
        self.index_error = ""
        self.embedder: Embedder | None = None
        self.encoder_error = ""
        self.root = Path()
        self.version = ""
        self._engine: TorchSearch | None = None
        self._has_label: dict[str, torch.Tensor] = {}  # label -> which rows have it
        self._classes: tuple[list[str], torch.Tensor] | None = None
        self._uploads_dir: Path | None = None  # made at the first upload, removed by close()
        self._uploads: OrderedDict[str, tuple[Path, torch.Tensor]] = OrderedDict()
        self._upload_ids = itertools.count(1)
        self._load()

    # -- loading ----------------------------------------------------------------------------------------------
    def _load(self) -> None:
        try:
            self.index = ImageIndex.load(self.settings.index)
        except ConvirtError as exc:
            self.index_error = str(exc)
            return
        index = self.index
        self.root = Path(index.root).resolve()
        identity = f"{Path(self.settings.index).resolve()}|{index.built}|{len(index)}"
        self.version = hashlib.sha1(identity.encode()).hexdigest()[:12]  # in image URLs: a new index, new URLs
        self._engine = TorchSearch(index.embeddings)
        self._has_label = {
            name: torch.tensor([name in row for row in index.labels], dtype=torch.bool) for name in index.label_names
        }
        try:
            self.embedder = embedder_for_index(index, self.settings.checkpoint, strict=True)
        except ConvirtError as exc:
            self.encoder_error = str(exc)

    def close(self) -> None:
        """Remove the uploads' temporary folder (if anything was uploaded)."""
        if self._uploads_dir is not None:
            shutil.rmtree(self._uploads_dir, ignore_errors=True)
            self._uploads_dir = None

    def _index(self) -> ImageIndex:
        if self.index is None:
            raise UnavailableError(f"the index could not be loaded: {self.index_error}")
        return self.index

    def _encoder(self, what: str) -> Embedder:
        self._index()
        if self.embedder is None:
            raise UnavailableError(f"{what} needs the index's encoder, which is not available: {self.encoder_error}")
        return self.embedder

    def _text_encoder(self, what: str) -> Embedder:
        embedder = self._encoder(what)
        if not embedder.has_text:
            raise UnavailableError(
                f"{what} needs a ConVIRT checkpoint (a text encoder); this index was built with "
                f"{self._index().encoder_spec}, an image-only encoder"
            )
        return embedder

    # -- what the page shows first ----------------------------------------------------------------------------
    def about(self) -> dict:
        """Everything the page's header and "about" panel show, and which features work."""
        info: dict = {"index_file": str(self.settings.index), "index_error": self.index_error}
        if self.index is None:
            return {**info, "ok": False, "features": dict.fromkeys(("text", "upload", "saliency", "zeroshot"), False)}
        index, embedder = self.index, self.embedder
        has_text = bool(embedder is not None and embedder.has_text)
        return {
            **info,
            "ok": True,
            "version": self.version,
            "images": len(index),
            "unreadable": len(index.failed),
            "root": index.root,
            "space": index.space,
            "dim": int(index.embeddings.shape[1]),
            "built": index.built,
            "encoder_spec": index.encoder_spec,
            "checkpoint": self.settings.checkpoint or index.encoder_spec,
            "fingerprint": index.fingerprint,
            "encoder": embedder.label if embedder is not None else "",
            "encoder_error": self.encoder_error,
            "labels": label_counts(index.labels),
            "label_source": index.label_source,
            "prompts": self.settings.prompts,
            "saliency_layer": self.settings.saliency_layer or "last feature map",
            "max_k": MAX_K,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "features": {
                "text": has_text and index.space == "v",
                "upload": embedder is not None,
                "saliency": has_text,
                "zeroshot": has_text,
            },
        }

    # -- searching --------------------------------------------------------------------------------------------
    def text_search(self, text: str, k: int, label: str = "", only: bool = False) -> dict:
        text = text.strip()
        if not text:
            raise RequestError("the query is empty: type a description of a finding, e.g. 'pleural effusion'")
        if len(text) > MAX_QUERY_CHARS:
            raise RequestError(f"the query is {len(text)} characters long; at most {MAX_QUERY_CHARS} are read")
        embedder = self._text_encoder("text search")
        index = self._index()
        if index.space != "v":
            raise UnavailableError(f"text search needs an index in the shared space v; this one is in {index.space}")
        with self.lock:
            vector = embedder.embed_texts([text])[0]
        return self._ranked(vector, k, label, only, exclude=None) | {"query": {"text": text}}

    def similar(self, query: ImageRef, k: int, label: str = "", only: bool = False) -> dict:
        """The images nearest to an indexed image (itself left out) or to an upload."""
        vector = self._vector(query, self._index().space)
        described = {"row": query.row, "name": self._name(query.row)} if query.row is not None else {}
        return self._ranked(vector, k, label, only, exclude=query.row) | {
            "query": described or {"upload": query.upload}
        }

    def _ranked(self, vector: torch.Tensor, k: int, label: str, only: bool, exclude: int | None) -> dict:
        index = self._index()
        k = check_k(k)
        labels = index.labels
        if label and label not in self._has_label:
            known = ", ".join(self._has_label) or "none: the index has no labels"
            raise RequestError(f"unknown label {label!r}; the index's labels are: {known}")
        if only and not label:
            raise RequestError("choose a label to show only the images that have it")
        allowed = self._has_label[label].clone() if only else torch.ones(len(index), dtype=torch.bool)
        if exclude is not None:
            allowed[exclude] = False
        assert self._engine is not None
        scores, rows = self._engine.search(F.normalize(vector.float(), dim=-1)[None], k, allowed)
        hits = []
        for rank, (score, row) in enumerate(zip(scores[0].tolist(), rows[0].tolist()), start=1):
            hits.append(
                {
                    "row": row,
                    "rank": rank,
                    "score": round(score, 4),
                    "name": self._name(row),
                    "path": index.paths[row],
                    "labels": labels[row] if labels else [],
                    "match": bool(label) and label in labels[row],
                }
            )
        result: dict = {"k": k, "hits": hits, "candidates": int(allowed.sum())}
        if label:
            relevant = sum(hit["match"] for hit in hits)
            result["precision"] = {
                "label": label,
                "k": len(hits),
                "relevant": relevant,
                "value": relevant / len(hits) if hits else 0.0,
            }
        return result

    # -- images -----------------------------------------------------------------------------------------------
    def _row(self, row: int) -> int:
        count = len(self._index())
        if not 0 <= row < count:
            raise NotFoundError(
                f"there is no image {row} in the index (its {count} images are numbered 0 to {count - 1})"
            )
        return row

    def _name(self, row: int | None) -> str:
        return "" if row is None else Path(self._index().paths[row]).name

    def image_file(self, row: int) -> Path:
        """The file of index row ``row``, if it lies inside the indexed folder (see the module docstring)."""
        relative = self._index().paths[self._row(row)]
        resolved = (self.root / relative).resolve()
        if not resolved.is_relative_to(self.root):
            raise RefusedError(
                f"image {row} ({relative}) lies outside the indexed folder {self.root}; the explorer serves only the "
                "images inside it"
            )
        if not resolved.is_file():
            raise NotFoundError(f"image {row} ({relative}) is no longer in {self.root}")
        return resolved

    def _query_file(self, query: ImageRef) -> Path:
        if (query.row is None) == (query.upload is None):
            raise RequestError("name one image: an index row or an upload")
        if query.row is not None:
            return self.image_file(query.row)
        return self._upload(query.upload or "")[0]

    def _upload(self, upload_id: str) -> tuple[Path, torch.Tensor]:
        if upload_id not in self._uploads:
            raise NotFoundError(f"upload {upload_id!r} is gone (the last {KEPT_UPLOADS} are kept); upload it again")
        return self._uploads[upload_id]

    def image_png(self, query: ImageRef, size: int = 256) -> bytes:
        """The image decoded and scaled to fit ``size`` x ``size``, as PNG bytes."""
        low, high = THUMBNAIL_SIZES
        if not low <= size <= high:
            raise RequestError(f"image size {size} is out of range; ask for {low} to {high} pixels")
        image = self._decode(self._query_file(query))
        image.thumbnail((size, size))
        return _png(image)

    @staticmethod
    def _decode(path: Path) -> Image.Image:
        try:
            return load_image(path, mode="L")
        except ImageLoadError as exc:
            raise RequestError(f"{path.name} cannot be shown: {exc.reason}") from exc

    def _vector(self, query: ImageRef, space: str) -> torch.Tensor:
        """The query image's embedding in ``space``: the index's stored one for a row, else embedded now."""
        index = self._index()
        if query.row is not None and query.upload is None and space == index.space:
            return index.embeddings[self._row(query.row)]
        if query.upload is not None and query.row is None and space == index.space:
            return self._upload(query.upload)[1]
        path = self._query_file(query)
        embedder = self._encoder("embedding this image")
        with self.lock:
            try:
                return embedder.embed_images([path], [space])[space][0]
            except ImageLoadError as exc:
                raise RequestError(f"{path.name} cannot be read: {exc.reason}") from exc

    # -- uploads ----------------------------------------------------------------------------------------------
    def upload(self, data: bytes) -> str:
        """Keep an uploaded image (checked and decoded safely) and embed it; returns its id."""
        embedder = self._encoder("searching by an uploaded image")
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise TooLargeError(f"the upload is {len(data):,} bytes; at most {limit:,} are accepted")
        if not data:
            raise RequestError("the upload is empty: choose an image file")
        upload_id = f"u{next(self._upload_ids)}"
        with self.lock:
            if self._uploads_dir is None:
                self._uploads_dir = Path(tempfile.mkdtemp(prefix="convirt-serve-"))
            path = self._uploads_dir / upload_id
        atomic_write_bytes(path, data)
        space = self._index().space
        try:
            _check_pixels(path)
            load_image(path, mode="L")
            with self.lock:
                vector = embedder.embed_images([path], [space])[space][0]
                self._uploads[upload_id] = (path, vector)
                while len(self._uploads) > KEPT_UPLOADS:
                    _, (old_path, _) = self._uploads.popitem(last=False)
                    old_path.unlink(missing_ok=True)
        except ImageLoadError as exc:
            path.unlink(missing_ok=True)
            raise RequestError(f"the uploaded file cannot be used: {exc.reason}") from exc
        return upload_id

    # -- explanations -----------------------------------------------------------------------------------------
    def saliency_png(self, query: ImageRef, text: str) -> tuple[bytes, float]:
        """The Grad-CAM overlay of the text query on the image (PNG) and their cosine similarity."""
        text = text.strip()
        if not text:
            raise RequestError("Grad-CAM explains a text query: type one first")
        embedder = self._text_encoder("Grad-CAM for a text query")
        path = self._query_file(query)
        with self.lock:
            try:
                (item,) = text_saliency(embedder, [path], [text[:MAX_QUERY_CHARS]], self.settings.saliency_layer)
            except ImageLoadError as exc:
                raise RequestError(f"{path.name} cannot be read: {exc.reason}") from exc
        picture = overlay(item.image, item.cam)
        picture.thumbnail((SALIENCY_SIZE, SALIENCY_SIZE))
        return _png(picture), float(item.score)

    def zero_shot(self, query: ImageRef) -> dict:
        """Class scores of the image for the prompt classes: cosine similarity and softmax(similarity / tau)."""
        embedder = self._text_encoder("zero-shot classification")
        if self._classes is None:
            prompts = read_prompts(self.settings.prompts)
            with self.lock:
                self._classes = class_embeddings(embedder, prompts)
        classes, class_emb = self._classes
        vector = F.normalize(self._vector(query, "v").float(), dim=-1)
        similarity, probability = zero_shot_scores(vector[None], class_emb, embedder.temperature)
        scores = [
            {"class": name, "similarity": round(float(s), 4), "probability": round(float(p), 4)}
            for name, s, p in zip(classes, similarity[0], probability[0])
        ]
        scores.sort(key=lambda entry: -entry["probability"])
        return {"prompts": self.settings.prompts, "temperature": embedder.temperature, "scores": scores}


def check_k(k: int) -> int:
    if not 1 <= k <= MAX_K:
        raise RequestError(f"k must be between 1 and {MAX_K}, not {k}")
    return k


def _check_pixels(path: Path) -> None:
    """Refuse an image whose header claims more than :data:`MAX_UPLOAD_PIXELS` pixels, before decoding it."""
    if is_dicom(path):
        return
    try:
        with open_image(path) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError):  # not an image PIL knows: load_image says why
        return
    if width * height > MAX_UPLOAD_PIXELS:
        raise ImageLoadError(
            str(path), f"{width} x {height} pixels is more than the {MAX_UPLOAD_PIXELS:,} an upload may have"
        )


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def label_counts(labels: Sequence[Sequence[str]]) -> dict[str, int]:
    """{label: number of images that have it}, sorted by label."""
    counts: dict[str, int] = {}
    for row in labels:
        for label in row:
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
