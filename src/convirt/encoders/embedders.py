"""Embedders: one interface over the encoders that retrieval, zero-shot, t-SNE, search and the Python API run.

- :class:`ImagePreprocessor`: the one input pipeline for embedding: load by content, one channel, resize (or, for
  classification, zero-pad to square and resize), ImageNet normalisation.
- :func:`embed_batches`: the one inference loop: each batch to the device (channels_last when ``fast``), run under
  :func:`convirt.runtime.inference_context` (bf16 autocast where native), outputs gathered on the CPU in float32.
- :class:`Embedder` (interface) -> :class:`ImageEmbedder` (an image encoder: space ``h_v``) ->
  :class:`ConvirtEncoder` (a ConVIRT model: spaces ``h_v`` and ``v``, and text ``u``) and
  :class:`PairClassifierEmbedder` (the Contrastive-Binary baseline: ``h_v``, sentences scored by its classifier).
- :meth:`Embedder.score_texts`: every sentence against every image, higher = better match: ``u . v`` for ConVIRT,
  the pair classifier's logit for Contrastive-Binary; text-image retrieval asks only this.
- :func:`load_embedder`: an encoder specification (:mod:`convirt.encoders.spec`) -> an embedder.
- :func:`encoder_fingerprint`: the hash of the weights that identifies an encoder in feature caches and indexes.

Every embedding ``embed_images``/``embed_texts`` return is L2-normalised, so a dot product is the cosine
similarity. The spaces are named as in the paper: ``h_v`` (image encoder output) and ``v`` (after the projection
head g_v, the space shared with the text embeddings ``u``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from convirt.data.images import load_image
from convirt.data.transforms import pad_resize_transform, pil_to_uint8_tensor, resize_transform
from convirt.encoders.build import build_convirt
from convirt.encoders.checkpoint import Checkpoint, LoadedModel, load_model, load_pair_classifier, restore_text_model
from convirt.encoders.export import load_export_model
from convirt.encoders.spec import RANDOM_LIKE, EncoderSpec
from convirt.errors import ConfigError
from convirt.models.image import ImageEncoder
from convirt.runtime import default_device, inference_context

SPACES = ("h_v", "v")

ImageInput = str | os.PathLike | Image.Image | torch.Tensor
Progress = Callable[[int], None]  # called with the number of images just embedded


def batched(items: Sequence, size: int) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class ImagePreprocessor:
    """Image (path, PIL image or an already preprocessed tensor) -> normalised (3, S, S) float tensor.

    Files are read by content (:func:`convirt.data.images.load_image`, one channel). ``pad=False``: a plain resize
    to S x S, the view pretraining validates on (embedding); ``pad=True``: zero-pad to square first, the
    classification input of the paper's Appendix B.
    """

    def __init__(self, image_size: int = 224, pad: bool = False) -> None:
        self.image_size = image_size
        self.transform = pad_resize_transform(image_size) if pad else resize_transform(image_size)

    def __call__(self, image: ImageInput) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            return image
        image = image.convert("L") if isinstance(image, Image.Image) else load_image(image, mode="L")
        return self.transform(pil_to_uint8_tensor(image))


def to_device(batch: torch.Tensor, device: torch.device, fast: bool) -> torch.Tensor:
    """A batch on ``device``, channels_last when ``fast`` (the layout :func:`prepare_module` gives the module)."""
    batch = batch.to(device)
    return batch.to(memory_format=torch.channels_last) if fast else batch


def prepare_module(module: torch.nn.Module, device: torch.device, fast: bool) -> torch.nn.Module:
    """``module`` on ``device`` in eval mode, channels_last when ``fast``."""
    module = module.to(device).eval()
    return module.to(memory_format=torch.channels_last) if fast else module


def embed_batches(
    forward: Callable[[torch.Tensor], dict[str, torch.Tensor]],
    batches: Iterable[torch.Tensor],
    device: torch.device,
    fast: bool,
    progress: Progress | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Run ``forward`` on every batch (see the module docstring); returns each output's float32 CPU chunks."""
    chunks: dict[str, list[torch.Tensor]] = {}
    for batch in batches:
        batch = to_device(batch, device, fast)
        with inference_context(device, fast):
            outputs = forward(batch)
        for key, value in outputs.items():
            chunks.setdefault(key, []).append(value.float().cpu())
        if progress:
            progress(len(batch))
    return chunks


def concat(chunks: list[torch.Tensor] | None, dim: int, normalize: bool = True) -> torch.Tensor:
    if not chunks:
        return torch.empty(0, dim)
    out = torch.cat(chunks).float()
    return F.normalize(out, dim=-1) if normalize else out


def encoder_fingerprint(*modules: torch.nn.Module, salt: str = "") -> str:
    """Short hash of the first module's name (an image encoder's architecture), ``salt`` and every weight.

    The one identity of an encoder for feature caches and indexes: retrained or re-seeded weights never reuse
    stale features, and an unchanged file touched on disk still does.
    """
    first = modules[0]
    digest = hashlib.sha1(str(getattr(first, "name", type(first).__name__)).encode() + salt.encode())
    for module in modules:
        for key, value in sorted(module.state_dict().items()):
            digest.update(key.encode())
            tensor = value.detach().cpu().contiguous()
            if tensor.dtype == torch.bfloat16:
                tensor = tensor.float()
            digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


class Embedder:
    """Embeds images into ``h_v`` and (when it has a projection head) ``v``, and texts into ``u``.

    ``has_text``: it embeds sentences into ``u`` (:meth:`embed_texts`), the space shared with ``v``.
    :attr:`text_space`: the image representation :meth:`score_texts` ranks against sentences (None: no text
    queries). ``init`` and ``fine_tuned``: what the specification says the weights are (see
    :attr:`convirt.encoders.spec.EncoderSpec.init`), which the retrieval table groups by.
    """

    label: str
    spec: str
    spaces: tuple[str, ...]
    has_text: bool
    image_size: int
    temperature: float = 0.1  # of the zero-shot softmax when the encoder has none of its own
    init: str = "custom"
    fine_tuned: dict | None = None

    @property
    def text_space(self) -> str | None:
        """The image representation (a key of :meth:`embed_images`) that :meth:`score_texts` takes."""
        return "v" if self.has_text else None

    def score_texts(self, texts: Sequence[str], images: torch.Tensor) -> torch.Tensor:
        """(Q, N) scores of every sentence against every image, higher = better match; ``images`` are the images'
        :attr:`text_space` embeddings. Here the cosine similarity of the sentences' ``u`` and the images' ``v``."""
        return self.embed_texts(texts) @ images.T

    def preprocess(self, image: ImageInput) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_images(
        self,
        images: Sequence[ImageInput],
        spaces: Sequence[str] | None = None,
        batch_size: int = 32,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise ConfigError(f"encoder {self.label!r} has no text tower; text queries need a ConVIRT checkpoint")

    def check_spaces(self, spaces: Sequence[str]) -> None:
        for space in spaces:
            if space == self.text_space:
                continue
            if space not in SPACES:
                raise ConfigError(f"unknown embedding space {space!r}; use h_v or v")
            if space not in self.spaces:
                raise ConfigError(
                    f"encoder {self.label!r} has no {space!r} space (it has {', '.join(self.spaces)}); the projected "
                    "space v needs a ConVIRT checkpoint"
                )

    @property
    def image_module(self) -> ImageEncoder:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class ImageEmbedder(Embedder):
    """An image encoder without heads or text tower (random, ImageNet, exported, a baseline's): space ``h_v``."""

    spaces: tuple[str, ...] = ("h_v",)
    has_text = False

    def __init__(
        self,
        image_encoder: ImageEncoder,
        label: str = "",
        spec: str = "",
        image_size: int = 224,
        device: str | torch.device | None = None,
        fast: bool = True,
    ) -> None:
        self.device = torch.device(device) if device else default_device()
        self.fast = fast
        self.label = label or image_encoder.name
        self.spec = spec or self.label
        self.image_size = int(image_size)
        self.preprocess = ImagePreprocessor(self.image_size)  # type: ignore[method-assign]
        self.model = prepare_module(image_encoder, self.device, fast)

    @property
    def image_module(self) -> ImageEncoder:
        return self.model

    def _weights(self) -> tuple[torch.nn.Module, ...]:
        return (self.image_module,)

    @property
    def fingerprint(self) -> str:
        """:func:`encoder_fingerprint` of the weights behind the image embeddings, and the input size."""
        return encoder_fingerprint(*self._weights(), salt=f"@{self.image_size}")

    def _image_outputs(self, batch: torch.Tensor, spaces: Sequence[str]) -> dict[str, torch.Tensor]:
        return {"h_v": self.image_module(batch)}

    def embed_images(self, images, spaces=None, batch_size=32, progress=None) -> dict[str, torch.Tensor]:
        spaces = tuple(spaces or self.spaces)
        self.check_spaces(spaces)
        batches = (torch.stack([self.preprocess(x) for x in chunk]) for chunk in batched(list(images), batch_size))
        chunks = embed_batches(lambda b: self._image_outputs(b, spaces), batches, self.device, self.fast, progress)
        return {space: concat(chunks.get(space), self._space_dim(space), self._normalized(space)) for space in spaces}

    def _space_dim(self, space: str) -> int:
        return self.image_module.feature_dim

    def _normalized(self, space: str) -> bool:
        """Whether embeddings of ``space`` are L2-normalised (all but a scorer's own input)."""
        return True

    def _encode_sentences(self, texts: Sequence[str], forward, dim: int, batch_size: int = 64) -> list[torch.Tensor]:
        """``forward(input_ids, attention_mask, token_type_ids)`` on the tokenised sentences, float32 CPU chunks."""
        outputs = []
        for chunk in batched(list(texts), batch_size):
            tokens = self.tokenizer(  # type: ignore[attr-defined]
                list(chunk), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with inference_context(self.device, self.fast):
                out = forward(tokens["input_ids"], tokens["attention_mask"], tokens.get("token_type_ids"))
            outputs.append(out.float().cpu())
        return outputs or [torch.empty(0, dim)]


class ConvirtEncoder(ImageEmbedder):
    """A pretrained ConVIRT model ready to embed images (``h_v``, ``v``) and texts (``u``).

    >>> encoder = ConvirtEncoder.from_checkpoint("runs/convirt/checkpoints/best.ckpt")
    >>> image_embeddings = encoder.encode_images(["a.png", "b.jpg"])          # (2, 512), L2-normalised
    >>> text_embeddings = encoder.encode_texts(["No pleural effusion."])      # (1, 512)
    """

    spaces = SPACES
    has_text = True

    def __init__(
        self,
        model,
        tokenizer,
        config,
        device: str | torch.device | None = None,
        fast: bool = True,
        label: str = "ConVIRT",
        spec: str = "",
        image_size: int | None = None,
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = config.model.max_length
        size = image_size or config.data.augment.output_size
        super().__init__(model.image_encoder, label, spec, size, device, fast)
        self.model = model.to(self.device).eval()  # the whole ConVIRT model (its image encoder is channels_last)
        self.transform = self.preprocess.transform

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Checkpoint | str | os.PathLike,
        device: str | torch.device | None = None,
        fast: bool = True,
        label: str = "ConVIRT",
        spec: str = "",
    ) -> ConvirtEncoder:
        """Rebuild the model of a ConVIRT pretraining checkpoint (a path, or one already read)."""
        loaded = load_model(checkpoint)
        spec = spec or str(loaded.checkpoint.path)
        return cls(loaded.model, loaded.tokenizer, loaded.config, device, fast, label, spec)

    @classmethod
    def from_export(
        cls, spec: EncoderSpec | str, device=None, fast: bool = True, label: str = "", image_size: int | None = None
    ) -> ConvirtEncoder:
        """Rebuild a ConVIRT model from an export folder with heads and text tower (``convirt export``, or a
        fine-tuned encoder saved by ``convirt evaluate classify --save-encoder``)."""
        parsed = EncoderSpec.parse(spec)
        loaded: LoadedModel = load_export_model(parsed)
        size = image_size or parsed.export_meta().get("input", {}).get("size")
        return cls(
            loaded.model, loaded.tokenizer, loaded.config, device, fast, label or parsed.label, parsed.text, size
        )

    @property
    def image_encoder(self) -> ImageEncoder:
        return self.model.image_encoder

    @property
    def image_module(self) -> ImageEncoder:
        return self.model.image_encoder

    @property
    def temperature(self) -> float:  # type: ignore[override]
        return float(self.config.loss.temperature)

    def _weights(self) -> tuple[torch.nn.Module, ...]:
        return (self.model.image_encoder, self.model.image_head)  # what image embeddings (h_v, v) depend on

    def _space_dim(self, space: str) -> int:
        return self._dim(project=space == "v", image=True)

    def _image_outputs(self, batch: torch.Tensor, spaces: Sequence[str]) -> dict[str, torch.Tensor]:
        h_v = self.model.image_encoder(batch)
        out = {"h_v": h_v}
        if "v" in spaces:
            with torch.autocast(self.device.type, enabled=False):  # the head in float32, as on h_v read back
                out["v"] = self.model.image_head(h_v.float())
        return out

    def encode_images(
        self, images: Sequence[ImageInput], batch_size: int = 32, project: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Embed images (paths, PIL images or preprocessed tensors) -> (N, d) or (N, D_v) with ``project=False``."""
        batches = (torch.stack([self.preprocess(x) for x in chunk]) for chunk in batched(list(images), batch_size))
        chunks = embed_batches(
            lambda b: {"out": self.model.encode_image(b, project=project)}, batches, self.device, self.fast
        )
        return concat(chunks.get("out"), self._dim(project, image=True), normalize)

    def encode_texts(
        self, texts: Sequence[str], batch_size: int = 64, project: bool = True, normalize: bool = True
    ) -> torch.Tensor:
        """Embed sentences -> (N, d) or (N, D_u) with ``project=False``."""
        dim = self._dim(project, image=False)
        outputs = self._encode_sentences(
            texts, lambda ids, mask, types: self.model.encode_text(ids, mask, types, project=project), dim, batch_size
        )
        return concat(outputs, dim, normalize)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        return self.encode_texts(list(texts), project=True, normalize=True)

    def _dim(self, project: bool, image: bool) -> int:
        if project:
            return self.model.image_head.out_dim
        return (self.model.image_encoder if image else self.model.text_encoder).feature_dim


class PairClassifierEmbedder(ImageEmbedder):
    """The Contrastive-Binary baseline (:class:`convirt.models.pair_classifier.PairClassifier`): images embed into
    ``h_v``; a sentence and an image are scored by the pair classifier's logit (real pair or not), which is how
    text-image retrieval ranks the images for a sentence. It has no shared text-image space: no ``v``, no ``u``.
    """

    has_text = False
    text_space = "pair"  # type: ignore[assignment]  # the projected image features the classifier reads, unnormalised

    def __init__(
        self, model, tokenizer, config, device=None, fast: bool = True, label: str = "Contrastive-Binary", spec=""
    ) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.max_length = config.model.max_length
        super().__init__(model.image_encoder, label, spec, config.data.augment.output_size, device, fast)
        self.model = model.to(self.device).eval()

    @classmethod
    def from_checkpoint(cls, checkpoint, device=None, fast: bool = True, label: str = "Contrastive-Binary", spec=""):
        loaded = load_pair_classifier(checkpoint)
        spec = spec or str(loaded.checkpoint.path)
        return cls(loaded.model, loaded.tokenizer, loaded.config, device, fast, label, spec)

    @property
    def image_module(self) -> ImageEncoder:
        return self.model.image_encoder

    def _weights(self) -> tuple[torch.nn.Module, ...]:
        return (self.model.image_encoder, self.model.image_proj)

    def _space_dim(self, space: str) -> int:
        return self.model.image_proj.out_features if space == self.text_space else self.image_module.feature_dim

    def _normalized(self, space: str) -> bool:
        return space != self.text_space

    def _image_outputs(self, batch: torch.Tensor, spaces: Sequence[str]) -> dict[str, torch.Tensor]:
        h_v = self.model.image_encoder(batch)
        out = {"h_v": h_v}
        if self.text_space in spaces:
            with torch.autocast(self.device.type, enabled=False):  # the classifier's inputs in float32
                out[self.text_space] = self.model.image_proj(h_v.float())
        return out

    def score_texts(self, texts: Sequence[str], images: torch.Tensor) -> torch.Tensor:
        """(Q, N) pair-classifier logits of every sentence with every image (``images``: their ``pair`` features)."""
        dim = self.model.text_proj.out_features
        chunks = self._encode_sentences(texts, lambda ids, mask, types: self.model.text_encoder(ids, mask, types), dim)
        with torch.no_grad(), torch.autocast(self.device.type, enabled=False):
            text = self.model.text_proj(torch.cat(chunks).to(self.device))
            return self.model.score(images.to(self.device), text).float().cpu()

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        raise ConfigError(
            f"encoder {self.label!r} (Contrastive-Binary) scores (sentence, image) pairs with its binary classifier "
            "and has no text embedding space: text-image retrieval ranks by that score; zero-shot classification, "
            "text search and text saliency need a ConVIRT checkpoint"
        )


def random_convirt_like(
    checkpoint: Checkpoint, seed: int = 0, device=None, fast: bool = True, label: str = "random init", spec: str = ""
) -> ConvirtEncoder:
    """A :class:`ConvirtEncoder` with the architecture of ``checkpoint`` and all weights freshly initialised."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_model, tokenizer = restore_text_model(checkpoint)  # built from its config: random weights
        model = build_convirt(checkpoint.config.model, image_weights=None, text_model=text_model)
    return ConvirtEncoder(model.eval(), tokenizer, checkpoint.config, device, fast, label, spec)


def load_embedder(
    spec: str | EncoderSpec,
    label: str | None = None,
    seed: int = 0,
    image_size: int = 224,
    device: str | torch.device | None = None,
    fast: bool = True,
) -> Embedder:
    """Resolve an encoder specification into an :class:`Embedder`, by what scores its sentences
    (:attr:`EncoderSpec.text_tower`).

    A ConVIRT checkpoint (and ``random-like:`` one) or an export folder with heads and text tower gives a
    :class:`ConvirtEncoder` (at the checkpoint's or export's input size); a Contrastive-Binary checkpoint a
    :class:`PairClassifierEmbedder`; anything else an :class:`ImageEmbedder` at ``image_size``. Random weights are
    drawn from ``seed``.
    """
    parsed = EncoderSpec.parse(spec)
    label = label or parsed.label
    tower = parsed.text_tower
    embedder: Embedder
    if tower == "convirt" and parsed.kind == RANDOM_LIKE:
        embedder = random_convirt_like(parsed.checkpoint(), seed, device, fast, label, parsed.text)
    elif tower == "convirt" and parsed.kind == "export":
        embedder = ConvirtEncoder.from_export(parsed, device, fast, label)
    elif tower == "convirt":
        embedder = ConvirtEncoder.from_checkpoint(parsed.checkpoint(), device, fast, label, parsed.text)
    elif tower == "pair_classifier":
        embedder = PairClassifierEmbedder.from_checkpoint(parsed.checkpoint(), device, fast, label, parsed.text)
    else:
        # random:NAME and another objective's random-like: are drawn from the seed, so a rerun ranks the same way
        encoder = parsed.image_encoder(seed)
        embedder = ImageEmbedder(encoder, label, parsed.text, image_size=image_size, device=device, fast=fast)
    embedder.init, embedder.fine_tuned = parsed.init, parsed.fine_tuned
    return embedder
