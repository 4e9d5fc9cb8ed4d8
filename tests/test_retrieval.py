"""Zero-shot retrieval: Precision@k by hand, perfect and constant encoders, the official lists, a fake CheXpert tree."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from convirt.cli import main
from convirt.data.chexpert8x200 import (
    CHEXPERT_8X200_CATEGORIES as CHEXPERT_CATEGORIES,
)
from convirt.data.chexpert8x200 import (
    MissingImagesError,
    RetrievalLists,
    read_official_lists,
    resolve_chexpert_paths,
)
from convirt.errors import ManifestError
from convirt.evaluation.retrieval import (
    evaluate_labelled,
    evaluate_lists,
    evaluate_official,
    precision_at_k,
    report_markdown,
    retrieval_precision,
)
from test_retrieval_support import LookupEmbedder, one_hot, write_tiny_checkpoint

# --------------------------------------------------------------------------------------------------------------
# Precision@k


def test_precision_at_k_matches_a_hand_computed_ranking():
    # Query 0 ranks: c0 (0.9, hit), c2 (0.8), c4 (0.7, hit), c3 (0.3, hit), c5 (0.2), c1 (0.1).
    # Query 1 ranks: c1 (0.9, hit), c5 (0.6, hit), c0 (0.5), c2, c3, c4.
    similarity = torch.tensor([[0.9, 0.1, 0.8, 0.3, 0.7, 0.2], [0.5, 0.9, 0.4, 0.3, 0.2, 0.6]])
    relevant = torch.tensor([[1, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 1]], dtype=torch.bool)
    got = precision_at_k(similarity, relevant, ks=[1, 2, 3, 4, 6])
    expected = torch.tensor([[1, 1 / 2, 2 / 3, 3 / 4, 3 / 6], [1, 1, 2 / 3, 2 / 4, 2 / 6]], dtype=torch.float64)
    torch.testing.assert_close(got, expected)


def test_ties_count_by_expectation_and_excluded_candidates_leave_the_ranking():
    # c0 first (miss); c1, c2, c3 tie at 0.5 with one hit among them; P@2 = (0 + 1 * 1/3) / 2.
    similarity = torch.tensor([[1.0, 0.5, 0.5, 0.5, 0.0]])
    relevant = torch.tensor([[0, 1, 0, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(precision_at_k(similarity, relevant, [2]), torch.tensor([[1 / 6]], dtype=torch.float64))
    # Excluding c0 (e.g. the query itself): the three tied ones come first; P@3 = 1/3, P@4 = 2/4.
    exclude = torch.tensor([[1, 0, 0, 0, 0]], dtype=torch.bool)
    torch.testing.assert_close(
        precision_at_k(similarity, relevant, [3, 4], exclude), torch.tensor([[1 / 3, 2 / 4]], dtype=torch.float64)
    )


def test_constant_embeddings_score_the_class_prior_of_each_query():
    # 3 candidates of A, 1 of B: every ranking is one big tie, so P@k is the share of relevant candidates.
    candidates = torch.ones(4, 3)
    per_query = retrieval_precision(torch.ones(2, 3), ["A", "B"], candidates, ["A", "A", "A", "B"], ks=[1, 2, 4])
    torch.testing.assert_close(per_query, torch.tensor([[0.75] * 3, [0.25] * 3], dtype=torch.float64))


def test_leave_one_out_perfect_and_constant_encoders_on_a_labelled_set():
    labels = ["A"] * 4 + ["B"] * 2
    paths = [f"img{i}.png" for i in range(6)]
    perfect = LookupEmbedder({p: one_hot(0 if y == "A" else 1, 2) for p, y in zip(paths, labels)})
    report = evaluate_labelled([perfect], paths, labels, ks=[1, 3])
    image_v = next(r for r in report.results if r.space == "v")
    assert image_v.per_category["A"] == {1: 100.0, 3: 100.0}  # 3 other A's
    assert image_v.per_category["B"][1] == 100.0  # 1 other B, then 4 A's tied at 0: P@3 = 1/3
    assert image_v.per_category["B"][3] == pytest.approx(100 / 3)
    # Blocks of queries (bounded memory) give the same numbers as one matrix.
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    self_mask = torch.eye(6, dtype=torch.bool)
    torch.testing.assert_close(
        retrieval_precision(x, labels, x, labels, [1, 3], self_mask, max_elements=7),
        retrieval_precision(x, labels, x, labels, [1, 3], self_mask),
    )
    constant = LookupEmbedder(dict.fromkeys(paths, torch.ones(2)))
    report = evaluate_labelled([constant], paths, labels, ks=[1, 3])
    result = report.results[0]
    # Each A query sees 3 A's among 5 others; each B query sees 1 B among 5 others.
    assert result.per_category["A"][1] == pytest.approx(60.0)
    assert result.per_category["B"][3] == pytest.approx(20.0)
    assert result.mean[1] == pytest.approx(40.0)
    assert report.prior["image_image"].mean[1] == pytest.approx(40.0)


# --------------------------------------------------------------------------------------------------------------
# Official lists


def test_official_lists_parse_all_rows_and_the_eight_categories(official: RetrievalLists):
    assert (len(official.candidate_paths), len(official.image_query_paths), len(official.text_queries)) == (
        1600,
        80,
        40,
    )
    assert set(official.categories) == set(CHEXPERT_CATEGORIES) and len(official.categories) == 8
    for category in CHEXPERT_CATEGORIES:
        assert official.candidate_labels.count(category) == 200
        assert official.image_query_labels.count(category) == 10
        assert official.text_query_labels.count(category) == 5
    assert len(official.image_paths()) == 1680
    assert all(p.startswith("CheXpert-v1.0-small/train/") for p in official.image_paths())
    assert "Pleural air is present." in official.text_queries


def test_official_parser_rejects_changed_lists(official: RetrievalLists, tmp_path: Path):
    source = Path(official.source)
    for name in ("candidate.csv", "image_query.csv", "text_query.csv"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    frame = pd.read_csv(source / "text_query.csv")
    frame.iloc[:-1].to_csv(tmp_path / "text_query.csv", index=False)  # one No Finding sentence fewer
    with pytest.raises(ManifestError, match="expected 5 rows per category"):
        read_official_lists(tmp_path)
    assert len(read_official_lists(tmp_path, strict=False).text_queries) == 39
    frame.assign(Variable=frame["Variable"].replace("Edema", "Oedema")).to_csv(tmp_path / "text_query.csv", index=False)
    with pytest.raises(ManifestError, match="Oedema"):
        read_official_lists(tmp_path, strict=False)


def test_perfect_encoder_scores_100_and_constant_encoder_the_prior_on_the_official_lists(official: RetrievalLists):
    index = {c: i for i, c in enumerate(CHEXPERT_CATEGORIES)}
    paths = [*official.image_query_paths, *official.candidate_paths]
    labels = [*official.image_query_labels, *official.candidate_labels]
    images = {p: one_hot(index[y], 8) for p, y in zip(paths, labels)}
    texts = {t: one_hot(index[y], 8) for t, y in zip(official.text_queries, official.text_query_labels)}
    report = evaluate_lists([LookupEmbedder(images, texts)], official)
    assert {(r.task, r.space) for r in report.results} == {
        ("image_image", "h_v"),
        ("image_image", "v"),
        ("text_image", "v"),
    }
    for result in report.results:
        assert result.mean == {5: 100.0, 10: 100.0, 50: 100.0, 100: 100.0}
        assert all(v == {5: 100.0, 10: 100.0, 50: 100.0, 100: 100.0} for v in result.per_category.values())
    constant = LookupEmbedder(dict.fromkeys(paths, torch.ones(8)), dict.fromkeys(official.text_queries, torch.ones(8)))
    for result in evaluate_lists([constant], official).results:
        assert result.mean == pytest.approx({5: 12.5, 10: 12.5, 50: 12.5, 100: 12.5})
    markdown = report_markdown(report)
    assert "| ConVIRT (paper) | 45.0 | 42.9 | 35.7 | – | 60.0 | 57.5 | 48.8 | – |" in markdown
    line = "| fake, image space v (ours, not a row of Table 2) | " + " | ".join(["100.0"] * 8) + " |"
    assert line in markdown  # a custom encoder: no row of Table 2


def test_missing_chexpert_images_give_one_error_with_the_count_and_the_place(official: RetrievalLists, tmp_path):
    with pytest.raises(MissingImagesError) as error:
        resolve_chexpert_paths(official.image_paths(), tmp_path)
    message = str(error.value)
    assert "1680 of the 1680" in message and str(tmp_path.resolve() / "CheXpert-v1.0-small") in message
    code = main(
        [
            "evaluate",
            "retrieval",
            "--chexpert-root",
            str(tmp_path),
            "--encoder",
            "random:resnet18",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------------------------
# A fake CheXpert-v1.0-small tree at the exact relative paths of some official rows, and a real (tiny) model


def _fake_tree(lists: RetrievalLists, root: Path) -> None:
    rng = np.random.default_rng(0)
    for path in lists.image_paths():
        file = root / path
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (80, 64), dtype=np.uint8), mode="L").save(file, format="JPEG")


def _first(labels: list[str], n: int) -> list[int]:
    return [i for c in CHEXPERT_CATEGORIES for i in [j for j, y in enumerate(labels) if y == c][:n]]


def _subset(official: RetrievalLists) -> RetrievalLists:
    first = _first
    return official.subset(
        first(official.candidate_labels, 3), first(official.image_query_labels, 1), first(official.text_query_labels, 1)
    )


def test_official_protocol_on_a_fake_chexpert_tree_matches_a_direct_ranking(official, tiny_bert_dir, tmp_path):
    from convirt.encoders.embedders import load_embedder

    lists = _subset(official)
    _fake_tree(lists, tmp_path)
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    embedder = load_embedder(str(checkpoint), fast=False)
    # The root may be the folder holding CheXpert-v1.0-small or that folder itself.
    report = evaluate_official([embedder], tmp_path / "CheXpert-v1.0-small", lists, ks=[1, 3, 5])
    assert {(r.task, r.space) for r in report.results} == {
        ("image_image", "h_v"),
        ("image_image", "v"),
        ("text_image", "v"),
    }
    # Recompute image-image P@k in h_v independently: embed with the API, rank with numpy.
    encoder = embedder  # the ConVIRT embedder is the API encoder
    queries = encoder.encode_images([tmp_path / p for p in lists.image_query_paths], project=False).numpy()
    candidates = encoder.encode_images([tmp_path / p for p in lists.candidate_paths], project=False).numpy()
    order = np.argsort(-(queries @ candidates.T), axis=1, kind="stable")
    hits = np.asarray(lists.candidate_labels)[order] == np.asarray(lists.image_query_labels)[:, None]
    result = next(r for r in report.results if r.space == "h_v")
    for k in (1, 3, 5):
        assert result.mean[k] == pytest.approx(100 * hits[:, :k].mean(), abs=1e-6)
        for i, category in enumerate(lists.image_query_labels):
            assert result.per_category[category][k] == pytest.approx(100 * hits[i, :k].mean(), abs=1e-6)


def test_retrieval_command_writes_table_csv_and_metrics(official, tiny_bert_dir, tmp_path):
    lists = _subset(official)
    _fake_tree(lists, tmp_path / "data")
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    source = Path(official.source)
    candidates = pd.read_csv(source / "candidate.csv")
    candidates[candidates["Path"].isin(lists.candidate_paths)].to_csv(list_dir / "candidate.csv", index=False)
    queries = pd.read_csv(source / "image_query.csv")
    queries[queries["Path"].isin(lists.image_query_paths)].to_csv(list_dir / "image_query.csv", index=False)
    texts = pd.read_csv(source / "text_query.csv")
    texts[texts["Text"].isin(lists.text_queries)].to_csv(list_dir / "text_query.csv", index=False)
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    out = tmp_path / "out"
    code = main(
        [
            "evaluate",
            "retrieval",
            "--chexpert-root",
            str(tmp_path / "data"),
            "--lists",
            str(list_dir),
            "--encoder",
            str(checkpoint),
            "--encoder",
            "random:resnet18",
            "--image-size",
            "64",
            "--k",
            "1",
            "5",
            "--no-fast",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["data"]["n_candidates"] == 24 and metrics["data"]["n_image_queries"] == 8
    assert [(r["encoder"], r["task"], r["space"]) for r in metrics["results"]] == [
        ("ConVIRT", "image_image", "h_v"),
        ("ConVIRT", "image_image", "v"),
        ("ConVIRT", "text_image", "v"),
        ("random init (resnet18)", "image_image", "h_v"),
    ]
    table = pd.read_csv(out / "retrieval.csv")
    means = table[(table.category == "mean") & (table.encoder == "ConVIRT") & (table.space == "h_v")]
    assert means.set_index("k")["precision_percent"].to_dict() == pytest.approx(
        {int(k): v for k, v in metrics["results"][0]["precision_at_k_percent"]["mean"].items()}, abs=1e-3
    )
    markdown = (out / "retrieval.md").read_text()
    assert "ConVIRT (paper)" in markdown and "Random ranking (class prior, ours) | 12.5 | 12.5" in markdown


def test_sampled_image_queries_leave_the_candidates_and_text_queries_need_known_classes():
    labels = ["A"] * 5 + ["B"] * 4
    paths = [f"img{i}.png" for i in range(9)]
    images = {p: one_hot(0 if y == "A" else 1, 2) for p, y in zip(paths, labels)}
    texts = {"a": one_hot(0, 2), "b": one_hot(1, 2)}
    report = evaluate_labelled(
        [LookupEmbedder(images, texts)],
        paths,
        labels,
        {"A": ["a"], "B": ["b"]},
        ks=[1, 3],
        image_queries_per_class=2,
        seed=1,
    )
    assert report.data["n_candidates"] == 5 and report.data["n_image_queries"] == 4
    for result in report.results:  # 3 A and 2 B candidates remain: P@3 of a B query is 2/3
        assert result.per_category["A"] == {1: 100.0, 3: 100.0}
        assert result.per_category["B"] == pytest.approx({1: 100.0, 3: 200 / 3})
    with pytest.raises(Exception, match="no image has"):
        evaluate_labelled([LookupEmbedder(images, texts)], paths, labels, {"C": ["a"]}, ks=[1])


def test_random_image_encoders_are_drawn_from_the_seed():
    from convirt.encoders.embedders import load_embedder

    images = torch.rand(2, 3, 32, 32)

    def embed(seed: int) -> torch.Tensor:
        torch.rand(7)  # the global RNG state must not matter
        embedder = load_embedder("random:resnet18", seed=seed, image_size=32, device="cpu", fast=False)
        return embedder.embed_images(images, ["h_v"])["h_v"]

    torch.testing.assert_close(embed(0), embed(0))
    assert not torch.allclose(embed(0), embed(1))
