"""Zero-shot retrieval: the official CheXpert 8x200 protocol (paper Section 3.2, Table 2) and a generic version.

**Official protocol.** The authors released three lists (``candidate.csv``: 1600 candidate images, 200 exclusively
positive for each of 8 categories; ``image_query.csv``: 80 expert-selected query images, 10 per category;
``text_query.csv``: 40 expert-written sentences, 5 per category), with paths relative to a CheXpert-v1.0-small
download (read by :mod:`convirt.data.chexpert8x200`). Every query ranks all 1600 candidates by cosine
similarity; a retrieved image is correct when its category is the query's. Image-image retrieval embeds queries
and candidates with the image encoder, in ``h_v`` (encoder output) or ``v`` (after the projection head; the paper
does not say which, so both are reported by default); text-image retrieval ranks the candidates of each sentence
by the encoder's :meth:`~convirt.encoders.embedders.Embedder.score_texts`: the cosine similarity of the sentence's
``u`` and the image's ``v`` for ConVIRT, the binary pair classifier's logit for the Contrastive-Binary baseline.
The Markdown report lays the results out as the paper's Table 2 (:func:`table2_row` says which row an encoder
fills) and names the rows no given encoder fills, with how to produce them.

**Generic protocol.** The same metrics on any labelled image set with text queries per class from a prompt file
(:func:`convirt.encoders.prompts.read_prompts`). Image queries are either every image against all the others
(leave-one-out, the default) or ``N`` images drawn per class and removed from the candidates, like the official
lists.

**Metric.** Precision@k in percent: the share of the top k candidates whose category is the query's, averaged
over the queries of a category (per-category) and over categories (mean; equal to the mean over queries when
every category has as many queries, as in the official protocol). Ties in similarity are resolved by expectation
over a random order of the tied candidates (McSherry and Najork, 2008), so the result does not depend on the
candidates' file order: an encoder that maps every image to the same vector scores exactly the class prior
(12.5 on the official lists), a random encoder scores it in expectation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from convirt.data.chexpert8x200 import RetrievalLists, read_official_lists, resolve_chexpert_paths
from convirt.encoders.embedders import Embedder
from convirt.errors import ConfigError

DEFAULT_KS = (5, 10, 50, 100)
TASKS = ("image_image", "text_image")


def fitting_cutoffs(ks: Sequence[int] | None, candidates: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the Precision@k cut-offs to compute, the default ones left out) for ``candidates`` candidates per query.

    ``ks`` None: the cut-offs of :data:`DEFAULT_KS` that fit (at most ``candidates``), the others left out and
    reported. Cut-offs asked for are all kept: one that does not fit is an error (:func:`precision_at_k`).
    """
    if ks is not None:
        return tuple(ks), ()
    kept = tuple(k for k in DEFAULT_KS if k <= candidates)
    if not kept:
        raise ConfigError(f"{candidates} candidate(s) per query: too few for Precision@{DEFAULT_KS[0]}", setting="k")
    return kept, tuple(k for k in DEFAULT_KS if k > candidates)


def _note_dropped(report: RetrievalReport, dropped: tuple[int, ...], candidates: int) -> RetrievalReport:
    if dropped:
        report.data["dropped_cutoffs"] = {"ks": list(dropped), "candidates_per_query": candidates}
    return report


def precision_at_k(
    similarity: torch.Tensor,
    relevant: torch.Tensor,
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
) -> torch.Tensor:
    """Tie-aware Precision@k of each query, as fractions: (Q, len(ks)).

    ``similarity`` (Q, N) ranks the N candidates of each query (higher first); ``relevant`` (Q, N) marks the
    correct ones; ``exclude`` (Q, N) removes candidates from a query's ranking (e.g. the query itself).
    Candidates tied at the k-th similarity count by expectation over their random order.
    """
    if similarity.shape != relevant.shape:
        raise ValueError(f"similarity {tuple(similarity.shape)} and relevant {tuple(relevant.shape)} differ")
    sims = similarity.detach().double().clone()
    relevant = relevant.bool().clone()
    if exclude is not None:
        sims[exclude] = float("-inf")
        relevant &= ~exclude
    available = sims.shape[1] - (0 if exclude is None else int(exclude.sum(1).max()))
    out = torch.empty(sims.shape[0], len(ks), dtype=torch.float64)
    for column, k in enumerate(ks):
        if not 1 <= k <= available:
            raise ConfigError(
                f"Precision@{k} needs at least {k} candidates per query; there are {available}", setting="k"
            )
        kth = sims.topk(k, dim=1).values[:, -1:]
        above, tied = sims > kth, sims == kth
        n_above, n_tied = above.sum(1), tied.sum(1)
        hits = (above & relevant).sum(1) + (k - n_above) * (tied & relevant).sum(1) / n_tied
        out[:, column] = hits / k
    return out


@dataclass
class RetrievalResult:
    """Precision@k (percent) of one task in one space for one encoder."""

    encoder: str
    task: str  # image_image | text_image
    space: str  # h_v | v (text-image: v)
    ks: tuple[int, ...]
    per_category: dict[str, dict[int, float]]
    mean: dict[int, float]  # over categories
    mean_over_queries: dict[int, float]
    n_queries: dict[str, int]
    per_query: list[list[float]] = field(default_factory=list, repr=False)
    method: str | None = None  # the row of the paper's Table 2 the encoder fills (table2_row), if any

    def to_dict(self) -> dict:
        return {
            "encoder": self.encoder,
            "task": self.task,
            "space": self.space,
            "table2_row": self.method,
            "ks": list(self.ks),
            "precision_at_k_percent": {
                "mean": {str(k): v for k, v in self.mean.items()},
                "mean_over_queries": {str(k): v for k, v in self.mean_over_queries.items()},
                "per_category": {c: {str(k): v for k, v in d.items()} for c, d in self.per_category.items()},
            },
            "n_queries": self.n_queries,
        }


def summarize(
    per_query: torch.Tensor,
    query_labels: Sequence[str],
    categories: Sequence[str],
    ks: Sequence[int],
    encoder: str = "",
    task: str = "",
    space: str = "",
    method: str | None = None,
) -> RetrievalResult:
    """Per-category and mean Precision@k in percent from per-query fractions (Q, len(ks))."""
    labels = list(query_labels)
    per_category, counts = {}, {}
    for category in categories:
        rows = [i for i, label in enumerate(labels) if label == category]
        if rows:
            values = per_query[rows].mean(0)
            per_category[category] = {k: 100.0 * float(values[j]) for j, k in enumerate(ks)}
            counts[category] = len(rows)
    mean = {k: sum(d[k] for d in per_category.values()) / len(per_category) for k in ks}
    over_queries = {k: 100.0 * float(per_query[:, j].mean()) for j, k in enumerate(ks)}
    return RetrievalResult(
        encoder, task, space, tuple(ks), per_category, mean, over_queries, counts, per_query.tolist(), method
    )


def relevance(query_labels: Sequence[str], candidate_labels: Sequence[str]) -> torch.Tensor:
    """(Q, N) boolean: candidate j has query i's category."""
    names = sorted(set(query_labels) | set(candidate_labels))
    index = {name: i for i, name in enumerate(names)}
    q = torch.tensor([index[x] for x in query_labels])
    c = torch.tensor([index[x] for x in candidate_labels])
    return q[:, None] == c[None, :]


def retrieval_precision(
    query_embeddings: torch.Tensor,
    query_labels: Sequence[str],
    candidate_embeddings: torch.Tensor,
    candidate_labels: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    exclude: torch.Tensor | None = None,
    max_elements: int = 2**24,
) -> torch.Tensor:
    """Rank candidates by cosine similarity to each query; per-query Precision@k fractions (Q, len(ks)).

    Queries are processed in blocks so that leave-one-out over a large set never holds a Q x N matrix at once.
    """
    q = torch.nn.functional.normalize(query_embeddings.float(), dim=-1)
    c = torch.nn.functional.normalize(candidate_embeddings.float(), dim=-1)
    relevant = relevance(query_labels, candidate_labels)
    block = max(1, max_elements // max(1, len(c)))
    parts = []
    for start in range(0, len(q), block):
        rows = slice(start, start + block)
        parts.append(precision_at_k(q[rows] @ c.T, relevant[rows], ks, None if exclude is None else exclude[rows]))
    return torch.cat(parts) if parts else torch.empty(0, len(ks), dtype=torch.float64)


def class_prior_result(
    query_labels: Sequence[str],
    candidate_labels: Sequence[str],
    categories: Sequence[str],
    ks: Sequence[int],
    exclude: torch.Tensor | None = None,
    task: str = "image_image",
) -> RetrievalResult:
    """What a random ranking scores in expectation: each query's share of relevant candidates, for every k."""
    rel = relevance(query_labels, candidate_labels)
    if exclude is not None:
        rel = rel & ~exclude
    available = rel.shape[1] - (exclude.sum(1) if exclude is not None else 0)
    share = (rel.sum(1) / available).double()
    return summarize(share[:, None].expand(-1, len(ks)), query_labels, categories, ks, "random (class prior)", task)


@dataclass
class RetrievalReport:
    """Everything one retrieval run produced (all encoders, tasks and spaces)."""

    protocol: str  # chexpert-8x200 | labelled
    ks: tuple[int, ...]
    categories: tuple[str, ...]
    results: list[RetrievalResult]
    prior: dict[str, RetrievalResult]
    data: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "protocol": self.protocol,
            "ks": list(self.ks),
            "categories": list(self.categories),
            "data": self.data,
            "results": [r.to_dict() for r in self.results],
            "class_prior": {task: r.to_dict() for task, r in self.prior.items()},
        }


def _image_spaces(embedder: Embedder, spaces: Sequence[str]) -> list[str]:
    wanted = [s for s in spaces if s in embedder.spaces]
    if not wanted:
        raise ConfigError(f"encoder {embedder.label!r} has none of the spaces {list(spaces)}")
    return wanted


def _text_space(embedder: Embedder, lists: RetrievalLists) -> str | None:
    """The image representation the encoder scores the text queries against (None: no text-image retrieval)."""
    return embedder.text_space if lists.text_queries else None


def table2_row(embedder: Embedder) -> str | None:
    """The row of the paper's Table 2 (a key of ``paper_numbers.RETRIEVAL_ROWS``) this encoder fills, if any.

    ImageNet weights, a checkpoint of ConVIRT or of a baseline the table lists, and a ConVIRT encoder fine-tuned
    on CheXpert ("ConVIRT + CheXpert Supervised"); the "Random" row is a random ranking (the class prior), which
    randomly initialised encoders are not.
    """
    from convirt.evaluation.paper_numbers import RETRIEVAL_ROWS

    if embedder.fine_tuned is not None:
        on_chexpert = embedder.fine_tuned.get("paper_key") == "chexpert"
        return "convirt_chexpert_supervised" if embedder.init == "convirt" and on_chexpert else None
    return embedder.init if embedder.init in RETRIEVAL_ROWS and embedder.init != "random" else None


def evaluate_lists(
    embedders: Sequence[Embedder],
    lists: RetrievalLists,
    image_paths: dict[str, str | os.PathLike] | None = None,
    ks: Sequence[int] | None = None,
    spaces: Sequence[str] = ("h_v", "v"),
    batch_size: int = 32,
    protocol: str = "chexpert-8x200",
) -> RetrievalReport:
    """Image-image (each requested space the encoder has) and text-image retrieval over ``lists``.

    ``image_paths`` maps each list path to the file to read (see :func:`resolve_chexpert_paths`); by default the
    list paths are read as they are. ``ks`` None: the default cut-offs that fit (:func:`fitting_cutoffs`).
    """
    ks, dropped = fitting_cutoffs(ks, len(lists.candidate_paths))
    image_paths = image_paths or {p: p for p in lists.image_paths()}
    results: list[RetrievalResult] = []
    for embedder in embedders:
        wanted, text_space, row = _image_spaces(embedder, spaces), _text_space(embedder, lists), table2_row(embedder)
        needed = [*wanted, text_space] if text_space and text_space not in wanted else wanted
        queries = embedder.embed_images([image_paths[p] for p in lists.image_query_paths], wanted, batch_size)
        candidates = embedder.embed_images([image_paths[p] for p in lists.candidate_paths], needed, batch_size)
        for space in wanted:
            per_query = retrieval_precision(
                queries[space], lists.image_query_labels, candidates[space], lists.candidate_labels, ks
            )
            results.append(
                summarize(
                    per_query, lists.image_query_labels, lists.categories, ks, embedder.label, TASKS[0], space, row
                )
            )
        if text_space:
            results.append(_text_image(embedder, lists, candidates[text_space], lists.candidate_labels, ks, row))
    prior = {
        TASKS[0]: class_prior_result(lists.image_query_labels, lists.candidate_labels, lists.categories, ks),
    }
    if lists.text_queries:
        prior[TASKS[1]] = class_prior_result(
            lists.text_query_labels, lists.candidate_labels, lists.categories, ks, task=TASKS[1]
        )
    data = {
        "lists": lists.source,
        "n_candidates": len(lists.candidate_paths),
        "n_image_queries": len(lists.image_query_paths),
        "n_text_queries": len(lists.text_queries),
    }
    report = RetrievalReport(protocol, ks, tuple(lists.categories), results, prior, data)
    return _note_dropped(report, dropped, len(lists.candidate_paths))


def _text_image(
    embedder: Embedder,
    lists: RetrievalLists,
    candidates: torch.Tensor,
    candidate_labels: Sequence[str],
    ks: Sequence[int],
    row: str | None,
) -> RetrievalResult:
    """Text-image retrieval: the text queries rank the candidates (their ``text_space`` embeddings) by the
    encoder's own score."""
    scores = embedder.score_texts(lists.text_queries, candidates)
    per_query = precision_at_k(scores, relevance(lists.text_query_labels, candidate_labels), ks)
    space = embedder.text_space or ""
    return summarize(per_query, lists.text_query_labels, lists.categories, ks, embedder.label, TASKS[1], space, row)


def evaluate_official(
    embedders: Sequence[Embedder],
    chexpert_root: str | os.PathLike,
    lists: RetrievalLists | None = None,
    ks: Sequence[int] | None = None,
    spaces: Sequence[str] = ("h_v", "v"),
    batch_size: int = 32,
) -> RetrievalReport:
    """The official CheXpert 8x200 protocol; every listed image must exist under ``chexpert_root``."""
    lists = lists or read_official_lists()
    relative = lists.image_paths()
    resolved = resolve_chexpert_paths(relative, chexpert_root)
    report = evaluate_lists(embedders, lists, dict(zip(relative, resolved)), ks, spaces, batch_size)
    report.data["chexpert_root"] = str(Path(chexpert_root).resolve())
    return report


def labelled_lists(
    paths: Sequence[str],
    labels: Sequence[str],
    prompts: dict[str, list[str]] | None,
    image_queries_per_class: int | None = None,
    seed: int = 0,
    source: str = "",
) -> RetrievalLists:
    """Retrieval lists from a labelled image set: with ``image_queries_per_class`` N, N images per class (drawn
    with ``seed``) become queries and leave the candidates; with None every image is a query (leave-one-out:
    see :func:`evaluate_labelled`)."""
    if len(paths) != len(labels):
        raise ValueError("paths and labels differ in length")
    categories = tuple(sorted(set(labels)))
    text_queries, text_labels = [], []
    for category, sentences in (prompts or {}).items():
        if category not in categories:
            raise ConfigError(
                f"the text queries name class {category!r}, which no image has (classes: {list(categories)}); "
                "map a dataset class to it (CLASS=PROMPT_LABEL) or drop it from the prompt file",
                setting="prompt_map",
            )
        text_queries += sentences
        text_labels += [category] * len(sentences)
    if image_queries_per_class is None:
        return RetrievalLists(
            categories, list(paths), list(labels), list(paths), list(labels), text_queries, text_labels, source
        )
    generator = torch.Generator().manual_seed(seed)
    query_rows: list[int] = []
    for category in categories:
        rows = [i for i, label in enumerate(labels) if label == category]
        if len(rows) <= image_queries_per_class:
            raise ConfigError(
                f"class {category!r} has {len(rows)} images; cannot draw {image_queries_per_class} queries from it"
            )
        order = torch.randperm(len(rows), generator=generator)[:image_queries_per_class]
        query_rows += sorted(rows[i] for i in order.tolist())
    chosen = set(query_rows)
    candidate_rows = [i for i in range(len(paths)) if i not in chosen]
    return RetrievalLists(
        categories,
        [paths[i] for i in candidate_rows],
        [labels[i] for i in candidate_rows],
        [paths[i] for i in query_rows],
        [labels[i] for i in query_rows],
        text_queries,
        text_labels,
        source,
    )


def evaluate_labelled(
    embedders: Sequence[Embedder],
    paths: Sequence[str],
    labels: Sequence[str],
    prompts: dict[str, list[str]] | None = None,
    ks: Sequence[int] | None = None,
    spaces: Sequence[str] = ("h_v", "v"),
    image_queries_per_class: int | None = None,
    seed: int = 0,
    batch_size: int = 32,
    source: str = "",
) -> RetrievalReport:
    """Generic retrieval on a labelled image set (single label per image) with text queries per class.

    Leave-one-out (the default): every image queries all the others, itself excluded from its ranking. Images are
    embedded once per encoder. ``ks`` None: the default cut-offs that fit (:func:`fitting_cutoffs`).
    """
    lists = labelled_lists(paths, labels, prompts, image_queries_per_class, seed, source)
    if image_queries_per_class is not None:
        report = evaluate_lists(embedders, lists, None, ks, spaces, batch_size, protocol="labelled")
        report.data.update({"image_queries": f"{image_queries_per_class} per class", "seed": seed})
        return report
    ks, dropped = fitting_cutoffs(ks, len(paths) - 1)  # each image ranks all the others
    self_mask = torch.eye(len(paths), dtype=torch.bool)
    results = []
    for embedder in embedders:
        wanted, text_space, row = _image_spaces(embedder, spaces), _text_space(embedder, lists), table2_row(embedder)
        needed = [*wanted, text_space] if text_space and text_space not in wanted else wanted
        images = embedder.embed_images(list(paths), needed, batch_size)
        for space in wanted:
            per_query = retrieval_precision(images[space], labels, images[space], labels, ks, exclude=self_mask)
            results.append(summarize(per_query, labels, lists.categories, ks, embedder.label, TASKS[0], space, row))
        if text_space:
            results.append(_text_image(embedder, lists, images[text_space], labels, ks, row))
    prior = {TASKS[0]: class_prior_result(labels, labels, lists.categories, ks, exclude=self_mask)}
    if lists.text_queries:
        prior[TASKS[1]] = class_prior_result(lists.text_query_labels, labels, lists.categories, ks, task=TASKS[1])
    data = {
        "source": source,
        "n_images": len(paths),
        "images_per_class": {c: int(sum(1 for x in labels if x == c)) for c in lists.categories},
        "image_queries": "leave-one-out (every image against all others)",
        "n_text_queries": len(lists.text_queries),
    }
    return _note_dropped(
        RetrievalReport("labelled", ks, lists.categories, results, prior, data), dropped, len(paths) - 1
    )


# ---------------------------------------------------------------------------------------------------------------
# Reports: CSV (long format), Markdown (the paper's Table 2 layout), metrics.json.

TASK_TITLES = {"image_image": "Image-image", "text_image": "Text-image"}


def report_frame(report: RetrievalReport) -> pd.DataFrame:
    """One row per (encoder, task, space, category incl. 'mean', k) with Precision@k in percent."""
    rows = []
    for result in [*report.results, *report.prior.values()]:
        for category, values in [*result.per_category.items(), ("mean", result.mean)]:
            n = result.n_queries.get(category, sum(result.n_queries.values()))
            for k in result.ks:
                rows.append(
                    {
                        "encoder": result.encoder,
                        "task": result.task,
                        "space": result.space,
                        "category": category,
                        "k": k,
                        "precision_percent": round(values[k], 4),
                        "n_queries": n,
                    }
                )
    return pd.DataFrame(rows)


def dropped_cutoffs_note(report: RetrievalReport) -> str:
    """`` Precision@100 is not reported: 59 candidates per query.`` when default cut-offs were left out, else ``""``."""
    dropped = report.data.get("dropped_cutoffs")
    if not dropped:
        return ""
    names = ", ".join(f"Precision@{k}" for k in dropped["ks"])
    verb = "is" if len(dropped["ks"]) == 1 else "are"
    return f" {names} {verb} not reported: {dropped['candidates_per_query']} candidates per query."


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


# How to produce each row of Table 2 that no given encoder fills (the Random row is always ours: the class prior).
TABLE2_HOW = {
    "imagenet": "pass `--encoder imagenet:resnet50` (torchvision's ImageNet weights, the paper's IMAGENET1K_V1)",
    "caption_transformer": "pretrain with `configs/baselines/caption_transformer.yaml` and pass its checkpoint",
    "caption_lstm": "pretrain with `configs/baselines/caption_lstm.yaml` and pass its checkpoint",
    "contrastive_binary": "pretrain with `configs/baselines/contrastive_binary.yaml` and pass its checkpoint",
    "convirt": "pass a ConVIRT pretraining checkpoint (`configs/paper.yaml`)",
    "convirt_chexpert_supervised": "fine-tune a ConVIRT checkpoint on CheXpert with `convirt evaluate classify "
    "--dataset chexpert:ROOT --encoder best.ckpt --protocol finetune --fractions 1 --seeds 1 --save-encoder DIR` "
    "(the 1680 retrieval images are left out of its training data) and pass the folder it writes",
}


def table2(report: RetrievalReport) -> list[dict]:
    """The paper's Table 2, row by row: the paper's numbers, the encoders whose results fill the row, and why the
    row (or its text-image half, where the paper has one) has no result of ours."""
    from convirt.evaluation.paper_numbers import RETRIEVAL, RETRIEVAL_ROWS

    rows = []
    for method, name in RETRIEVAL_ROWS.items():
        paper = {task: RETRIEVAL.get((task, method)) for task in TASKS}
        encoders = list(dict.fromkeys(r.encoder for r in report.results if r.method == method))
        missing = None
        if method == "random":
            encoders = [r.encoder for r in report.prior.values()][:1]
        elif not encoders:
            missing = f"no encoder given; {TABLE2_HOW[method]}"
        elif paper["text_image"] and not any(r.method == method and r.task == "text_image" for r in report.results):
            missing = (
                f"text-image: {', '.join(encoders)} scored no text queries (the lists have none, or the encoder has "
                "no text tower)"
            )
        rows.append({"method": method, "name": name, "paper": paper, "encoders": encoders, "missing": missing})
    return rows


def _encoder_rows(results: Sequence[RetrievalResult]) -> list[tuple[str, dict[str, dict[int, float]]]]:
    """One line per image space of one encoder; its text-image result goes on the line of the space it ranks in
    (``v``), else on its first line (the pair classifier ranks by its own score)."""
    image = [r for r in results if r.task == "image_image"]
    text = next((r for r in results if r.task == "text_image"), None)
    host = next((r for r in image if text is not None and r.space == text.space), image[0] if image else None)
    lines = []
    for result in image:
        values = {"image_image": result.mean}
        if text is not None and result is host:
            values["text_image"] = text.mean
        lines.append((f"{result.encoder}, image space {result.space}", values))
    if text is not None and host is None:
        lines.append((text.encoder, {"text_image": text.mean}))
    return lines


def report_markdown(report: RetrievalReport, title: str = "Zero-shot retrieval", command: str = "") -> str:
    """Markdown: the paper's Table 2 layout (for the official protocol the paper's rows with ours beneath each,
    then the rows no given encoder fills and why), then the per-category tables."""
    ks = report.ks
    header = "| Method | " + " | ".join(f"{TASK_TITLES[t]} P@{k}" for t in TASKS for k in ks) + " |"
    lines = [f"# {title}", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += [
        f"Protocol: {report.protocol}; categories: {', '.join(report.categories)}. "
        "Precision@k in percent (ties counted by expectation); image-image rows name the image space "
        "(h_v = encoder output, v = projected); text-image ranks the images of a sentence by the encoder's score: "
        "u against v (cosine) for ConVIRT, the pair classifier's logit for Contrastive-Binary."
        + dropped_cutoffs_note(report),
        "",
        header,
        "|" + "---|" * (1 + len(TASKS) * len(ks)),
    ]

    def row(name: str, values: dict[str, dict[int, float] | None]) -> str:
        cells = [_fmt((values.get(t) or {}).get(k)) for t in TASKS for k in ks]
        return f"| {name} | " + " | ".join(cells) + " |"

    def encoder_lines(encoders: Sequence[str], suffix: str) -> list[str]:
        return [
            row(f"{name} ({suffix})", values)
            for encoder in encoders
            for name, values in _encoder_rows([r for r in report.results if r.encoder == encoder])
        ]

    prior = row("Random ranking (class prior, ours)", {t: r.mean for t, r in report.prior.items()})
    missing: list[str] = []
    if report.protocol == "chexpert-8x200":
        for entry in table2(report):
            lines.append(row(f"{entry['name']} (paper)", entry["paper"]))
            lines += [prior] if entry["method"] == "random" else encoder_lines(entry["encoders"], "ours")
            if entry["missing"]:
                missing.append(f"- **{entry['name']}**: {entry['missing']}.")
        others = [r.encoder for r in report.results if r.method is None]
        lines += encoder_lines(list(dict.fromkeys(others)), "ours, not a row of Table 2")
        lines += ["", "Rows of Table 2 without our result:" if missing else "Every row of Table 2 has our result."]
        lines += missing
    else:
        lines.append(prior)
        lines += encoder_lines(list(dict.fromkeys(r.encoder for r in report.results)), "ours")
    lines.append("")
    for result in report.results:
        lines += [
            f"## {result.encoder}: {TASK_TITLES[result.task].lower()} ({result.space})",
            "",
            "| Category | queries | " + " | ".join(f"P@{k}" for k in ks) + " |",
            "|---|---|" + "---|" * len(ks),
        ]
        for category, values in result.per_category.items():
            lines.append(
                f"| {category} | {result.n_queries[category]} | " + " | ".join(_fmt(values[k]) for k in ks) + " |"
            )
        lines.append(
            f"| **mean** | {sum(result.n_queries.values())} | " + " | ".join(_fmt(result.mean[k]) for k in ks) + " |"
        )
        lines.append("")
    if report.data:
        lines += ["Data: " + ", ".join(f"{k}={v}" for k, v in report.data.items()), ""]
    return "\n".join(lines)


def write_report(
    report: RetrievalReport, output_dir: str | os.PathLike, command: str = "", title: str = "Zero-shot retrieval"
) -> dict[str, Path]:
    """Write ``retrieval.csv``, ``retrieval.md`` and ``metrics.json`` (atomically) into ``output_dir``."""
    from convirt.fileio import atomic_open, atomic_write_json, atomic_write_text

    out = Path(output_dir)
    files = {"csv": out / "retrieval.csv", "markdown": out / "retrieval.md", "metrics": out / "metrics.json"}
    with atomic_open(files["csv"]) as handle:
        report_frame(report).to_csv(handle, index=False)
    atomic_write_text(files["markdown"], report_markdown(report, title, command))
    table = {"table2": table2(report)} if report.protocol == "chexpert-8x200" else {}
    atomic_write_json(files["metrics"], {"command": command, **report.to_dict(), **table})
    return files
