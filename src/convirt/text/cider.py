"""CIDEr-D (Vedantam et al., 2015) as computed by the COCO caption evaluation code (``pycocoevalcap``).

:func:`cider_d` uses ``pycocoevalcap`` (the COCO caption evaluation code; the dev extras install it) when it is
installed, and otherwise this module's dependency-free re-implementation of ``pycocoevalcap/cider/cider_scorer.py``
(the metric the COCO leaderboards and the captioning baselines report as "CIDEr"): n-grams n = 1..4, TF-IDF
vectors whose document frequencies are counted over the reference sets of the evaluated corpus
(idf = log(#images) - log(df)), clipped cosine similarity ``sum min(tf_c, tf_r) * tf_r / (|c| |r|)`` per n, a
Gaussian length penalty (sigma = 6), averaged over n and over the references of an image, times 10. It gives the
same numbers as ``pycocoevalcap.cider.Cider`` to 1e-9 (``tests/test_cider.py`` checks a hand-computed corpus with
both, and compares the two on a random corpus).

Text is tokenised with :func:`caption_words` (lower case, punctuation dropped: what the COCO PTB tokeniser does
for English reports), so callers may pass raw strings.

Note the metric's corpus dependence: an n-gram present in every image's references has idf 0 and contributes
nothing, so CIDEr needs a corpus of several images; an identical candidate and reference score 10 when the
sentence has at least four words and its n-grams are not shared by every image.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Mapping, Sequence

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def caption_words(text: str) -> list[str]:
    """Lower-case word tokens with punctuation removed."""
    return _WORD.findall(text.lower())


def ngram_counts(words: Sequence[str], n: int = 4) -> Counter:
    counts: Counter = Counter()
    for k in range(1, n + 1):
        for i in range(len(words) - k + 1):
            counts[tuple(words[i : i + k])] += 1
    return counts


def _vector(counts: Counter, df: Mapping[tuple, float], log_images: float, n: int):
    vec: list[dict[tuple, float]] = [{} for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for ngram, tf in counts.items():
        k = len(ngram) - 1
        weight = float(tf) * (log_images - math.log(max(1.0, df.get(ngram, 0.0))))
        vec[k][ngram] = weight
        norm[k] += weight * weight
        if k == 1:  # as pycocoevalcap: the "length" is the number of bigrams
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def _similarity(hyp, ref, n: int, sigma: float) -> list[float]:
    vec_h, norm_h, len_h = hyp
    vec_r, norm_r, len_r = ref
    delta = float(len_h - len_r)
    values = [0.0] * n
    for k in range(n):
        for ngram, weight in vec_h[k].items():
            if ngram in vec_r[k]:
                values[k] += min(weight, vec_r[k][ngram]) * vec_r[k][ngram]
        if norm_h[k] != 0 and norm_r[k] != 0:
            values[k] /= norm_h[k] * norm_r[k]
        values[k] *= math.e ** (-(delta**2) / (2 * sigma**2))
    return values


BACKENDS = ("auto", "pycocoevalcap", "python")


def _pycocoevalcap_scorer():
    try:
        from pycocoevalcap.cider.cider import Cider
    except ImportError:
        return None
    return Cider()


def cider_d(
    candidates: Mapping[Hashable, str],
    references: Mapping[Hashable, Sequence[str]],
    n: int = 4,
    sigma: float = 6.0,
    backend: str = "auto",
) -> tuple[float, dict[Hashable, float]]:
    """Corpus CIDEr-D: (mean score, score per key). ``candidates[key]`` is one string, ``references[key]`` a list.

    ``backend``: ``pycocoevalcap`` (the COCO caption code; needs the package), ``python`` (this module's
    re-implementation) or ``auto`` (pycocoevalcap when installed and n, sigma are its fixed 4 and 6, else python).
    Both get the same :func:`caption_words` tokens and give the same numbers.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if set(candidates) != set(references):
        raise ValueError("candidates and references must have the same keys")
    if not candidates:
        raise ValueError("CIDEr needs at least one candidate")
    keys = list(candidates)
    if any(not list(references[key]) for key in keys):
        raise ValueError(f"no reference for {next(k for k in keys if not list(references[k]))!r}")
    if backend != "python":
        scorer = _pycocoevalcap_scorer() if (n, sigma) == (4, 6.0) else None
        if scorer is not None:
            refs = {key: [" ".join(caption_words(r)) for r in references[key]] for key in keys}
            hyps = {key: [" ".join(caption_words(candidates[key]))] for key in keys}
            mean, per_key = scorer.compute_score(refs, hyps)
            return float(mean), {key: float(v) for key, v in zip(keys, per_key, strict=True)}
        if backend == "pycocoevalcap":
            raise ImportError("backend='pycocoevalcap' needs the pycocoevalcap package and n=4, sigma=6")
    cand_counts = {key: ngram_counts(caption_words(candidates[key]), n) for key in keys}
    ref_counts = {}
    for key in keys:
        refs = list(references[key])
        if not refs:
            raise ValueError(f"no reference for {key!r}")
        ref_counts[key] = [ngram_counts(caption_words(r), n) for r in refs]
    df: Counter = Counter()
    for key in keys:
        for ngram in set(g for counts in ref_counts[key] for g in counts):
            df[ngram] += 1
    log_images = math.log(float(len(keys)))
    scores: dict[Hashable, float] = {}
    for key in keys:
        hyp = _vector(cand_counts[key], df, log_images, n)
        total = [0.0] * n
        for counts in ref_counts[key]:
            sim = _similarity(hyp, _vector(counts, df, log_images, n), n, sigma)
            total = [a + b for a, b in zip(total, sim, strict=True)]
        scores[key] = sum(total) / n / len(ref_counts[key]) * 10.0
    return sum(scores.values()) / len(scores), scores
