"""CIDEr-D: hand-computed corpus, identical candidate = maximal score, both backends, agreement with pycocoevalcap."""

from __future__ import annotations

import importlib.util
import math
import random

import pytest

from convirt.text.cider import caption_words, cider_d

BACKENDS = [
    "python",
    pytest.param("pycocoevalcap", marks=pytest.mark.skipif(
        importlib.util.find_spec("pycocoevalcap") is None, reason="pycocoevalcap not installed (pip install -e .[dev])"
    )),
]  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_computed_corpus(backend: str) -> None:
    # Image 2's candidate equals its reference; image 1 differs in the last word. "e" is in both reference sets,
    # so its idf is log(2) - log(2) = 0; every other n-gram has idf w = log 2 (weights cancel in the cosines).
    mean, scores = cider_d({1: "a b c d", 2: "e f g h"}, {1: ["a b c e"], 2: ["e f g h"]}, backend=backend)
    unigram = 3 / (2 * math.sqrt(3))  # a, b, c match; |cand| = 2w (a b c d), |ref| = sqrt(3)w (e has weight 0)
    bigram, trigram, fourgram = 2 / 3, 1 / 2, 0.0
    assert scores[1] == pytest.approx(10 * (unigram + bigram + trigram + fourgram) / 4, abs=1e-9)
    assert scores[1] == pytest.approx(5.081730, abs=1e-6)
    assert scores[2] == pytest.approx(10.0, abs=1e-9)
    assert mean == pytest.approx((scores[1] + 10.0) / 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_identical_candidates_score_the_maximum(backend: str) -> None:
    reports = {
        0: "Heart size is normal. No pleural effusion.",
        1: "Bilateral patchy opacities in the lower lobes.",
        2: "Right upper lobe consolidation with air bronchograms.",
    }
    mean, scores = cider_d(reports, {k: [v] for k, v in reports.items()}, backend=backend)
    assert all(s == pytest.approx(10.0) for s in scores.values()) and mean == pytest.approx(10.0)
    _, worse = cider_d({**reports, 0: "heart size is normal"}, {k: [v] for k, v in reports.items()}, backend=backend)
    assert worse[0] < 10.0


def test_length_penalty_and_multiple_references() -> None:
    refs = {0: ["a b c d e", "a b c d f"], 1: ["x y z w v"]}
    _, scores = cider_d({0: "a b c d e", 1: "x y z w v"}, refs)
    assert 0 < scores[0] < 10.0  # averaged over two references, one not identical
    _, long = cider_d({0: "a b c d e a b c d e a b c d e a b c d e", 1: "x y z w v"}, refs)
    assert long[0] < scores[0]  # gaussian penalty on the length difference


def test_tokenisation_and_errors() -> None:
    words = caption_words("No acute disease. Heart: normal-sized!")
    assert words == ["no", "acute", "disease", "heart", "normal", "sized"]
    with pytest.raises(ValueError):
        cider_d({1: "a"}, {2: ["a"]})
    with pytest.raises(ValueError):
        cider_d({}, {})
    with pytest.raises(ValueError, match="backend"):
        cider_d({1: "a"}, {1: ["a"]}, backend="java")


def test_matches_pycocoevalcap_when_installed() -> None:
    cider_module = pytest.importorskip("pycocoevalcap.cider.cider")
    rng = random.Random(0)
    words = [
        "the",
        "lung",
        "is",
        "clear",
        "no",
        "effusion",
        "right",
        "left",
        "opacity",
        "base",
        "heart",
        "size",
        "normal",
    ]
    candidates = {i: " ".join(rng.choices(words, k=rng.randint(2, 12))) for i in range(30)}
    references = {
        i: [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 3))] for i in range(30)
    }
    theirs, their_scores = cider_module.Cider().compute_score(references, {k: [c] for k, c in candidates.items()})
    ours, our_scores = cider_d(candidates, references, backend="python")
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert [our_scores[i] for i in range(30)] == pytest.approx(list(their_scores), abs=1e-9)
