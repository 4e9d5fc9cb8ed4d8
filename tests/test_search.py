"""`convirt index` / `convirt search`: round trip on real Kermany images, resume, incremental updates, backends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from convirt.analysis.contact_sheet import contact_sheet
from convirt.analysis.search import (
    ImageIndex,
    IndexFileError,
    SearchHit,
    TorchSearch,
    build_index,
    find_images,
    parts_dir,
    search_index,
)
from convirt.cli import main
from convirt.encoders.embedders import load_embedder
from test_retrieval_support import copy_kermany, write_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_bert_dir: Path, tmp_path_factory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", tiny_bert_dir)


@pytest.fixture()
def folder(shared_data: Path, tmp_path: Path) -> Path:
    copy_kermany(shared_data, tmp_path / "images", per_class=4, split="test")
    return tmp_path / "images"


def test_index_and_search_round_trip_returns_the_query_image_first(folder, checkpoint, tmp_path, capsys):
    index_file = tmp_path / "kermany.index.pt"
    assert (
        main(
            [
                "index",
                str(folder),
                "--checkpoint",
                str(checkpoint),
                "-o",
                str(index_file),
                "--batch-size",
                "3",
                "--no-progress",
            ]
        )
        == 0
    )
    index = ImageIndex.load(index_file)
    assert len(index) == 8 and index.space == "v" and index.paths == find_images(folder)
    torch.testing.assert_close(index.embeddings.norm(dim=1), torch.ones(8))
    capsys.readouterr()
    query = folder / index.paths[5]
    assert (
        main(
            [
                "search",
                str(index_file),
                "--image",
                str(query),
                "-k",
                "3",
                "--json",
                "--contact-sheet",
                str(tmp_path / "sheet.png"),
            ]
        )
        == 0
    )
    hits = json.loads(capsys.readouterr().out)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["path"] == str(query.resolve()) and hits[0]["score"] == pytest.approx(1.0, abs=2e-2)
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]
    with Image.open(tmp_path / "sheet.png") as sheet:  # query + 3 hits in one row of 160-px tiles
        assert sheet.size[0] == 4 * (160 + 4) + 4
    assert main(["search", str(index_file), "Pneumonia is present.", "-k", "8", "--json"]) == 0
    text_hits = json.loads(capsys.readouterr().out)
    assert sorted(h["path"] for h in text_hits) == sorted(index.absolute(p) for p in index.paths)
    # Same ranking as scoring every image directly.
    embedder = load_embedder(str(checkpoint))
    direct = index.embeddings @ embedder.embed_texts(["Pneumonia is present."])[0]
    assert [h["path"] for h in text_hits] == [index.absolute(index.paths[i]) for i in direct.argsort(descending=True)]


def test_interrupted_index_resumes_and_reindexing_reuses_unchanged_files(folder, checkpoint, tmp_path):
    embedder = load_embedder(str(checkpoint), fast=False)
    output = tmp_path / "images.index.pt"
    done = []

    def interrupt_after_first_part(n: int) -> None:
        done.append(n)
        if sum(done) == 6:  # chunk_size 4: one part file written, then killed in the middle of the second
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(folder, embedder, output, batch_size=2, chunk_size=4, progress=interrupt_after_first_part)
    assert not output.exists() and len(list(parts_dir(output).glob("part-*.pt"))) == 1
    done.clear()
    resumed = build_index(folder, embedder, output, batch_size=2, chunk_size=4, progress=done.append)
    assert sum(done) == 4 and len(resumed) == 8 and not parts_dir(output).exists()
    fresh = build_index(folder, embedder, tmp_path / "fresh.pt", batch_size=8, progress=False)
    assert resumed.paths == fresh.paths
    torch.testing.assert_close(resumed.embeddings, fresh.embeddings, atol=1e-5, rtol=1e-4)

    # One new image and one unreadable file: only those are looked at again.
    shutil.copy(folder / resumed.paths[0], folder / "test" / "NORMAL" / "copy.jpeg")
    (folder / "test" / "NORMAL" / "broken.png").write_bytes(b"not an image")
    done.clear()
    updated = build_index(folder, embedder, output, batch_size=2, progress=done.append)
    assert sum(done) == 2 and len(updated) == 9
    assert updated.failed == [("test/NORMAL/broken.png", "not a recognised image format")]
    hits = search_index(updated, image=folder / resumed.paths[0], k=2, embedder=embedder)
    assert {Path(h.path).name for h in hits} == {"copy.jpeg", Path(resumed.paths[0]).name}

    # A different encoder never mixes with the partial work of another.
    parts_dir(output).mkdir()
    torch.save(
        {"fingerprint": "other", "space": "v", "root": str(folder.resolve())}, parts_dir(output) / "part-000000.pt"
    )
    with pytest.raises(IndexFileError, match="another encoder"):
        build_index(folder, embedder, output, progress=False)
    assert len(build_index(folder, embedder, output, restart=True, progress=False)) == 9


def test_torch_search_is_exact_and_faiss_agrees_when_installed():
    generator = torch.Generator().manual_seed(0)
    vectors = torch.nn.functional.normalize(torch.randn(500, 16, generator=generator), dim=1)
    queries = vectors[[3, 77]] + 0.01
    scores, indices = TorchSearch(vectors).search(queries, 5)
    expected = (queries @ vectors.T).topk(5, dim=1)
    assert indices[:, 0].tolist() == [3, 77]
    torch.testing.assert_close(indices, expected.indices)
    try:
        import faiss  # noqa: F401
    except ImportError:
        pytest.skip("faiss not installed (optional: pip install faiss-cpu)")
    from convirt.analysis.search import FaissSearch

    faiss_scores, faiss_indices = FaissSearch(vectors).search(queries, 5)
    torch.testing.assert_close(faiss_indices, indices)
    torch.testing.assert_close(faiss_scores, scores, atol=1e-5, rtol=1e-5)


def test_text_search_needs_the_shared_space_and_images_are_found_by_content(tmp_path: Path):
    (tmp_path / "a").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "a" / "x.png")
    (tmp_path / "a" / "notes.txt").write_text("no")
    (tmp_path / ".hidden.png").write_bytes(b"")
    dicom = tmp_path / "a" / "SERIES0001"
    dicom.write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)
    assert find_images(tmp_path) == ["a/SERIES0001", "a/x.png"]
    index = ImageIndex(str(tmp_path), ["a/x.png"], torch.ones(1, 4) / 2, "h_v", "random:resnet18", "f")
    with pytest.raises(Exception, match="text search needs"):
        search_index(index, text="Pneumonia.", embedder=load_embedder("random:resnet18"))
    sheet = contact_sheet([SearchHit(1, str(tmp_path / "a" / "x.png"), 0.5)], tmp_path / "s.png", query_text="q")
    with Image.open(sheet) as image:
        assert image.size == (2 * 164 + 4, 160 + 34 + 8)  # two tiles, one row with a two-line caption
