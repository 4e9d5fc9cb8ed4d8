"""`convirt serve` at the HTTP level: answers, the images it refuses to serve, uploads, and the error messages the
page shows (a bad index, a checkpoint of another encoder, an empty query), with the server still up afterwards.

The server runs in a thread on a free loopback port over a tiny real index (tests/serve_fixtures.py); requests go
through ``http.client``, which sends the path exactly as written (no ``../`` clean-up on the client side).
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi", reason="the app extra is not installed (pip install -e '.[app]')")
pytest.importorskip("uvicorn", reason="the app extra is not installed (pip install -e '.[app]')")

from convirt.analysis.search import ImageIndex, build_index
from convirt.app.explorer import MAX_UPLOAD_PIXELS, Explorer, ExplorerSettings, ImageRef, RefusedError, RequestError
from convirt.app.server import background_server, create_app
from convirt.cli import main
from convirt.encoders.prompts import read_prompts
from serve_fixtures import DUPLICATE, PLANTED, image_ranking, index_collection, text_ranking
from test_retrieval_support import write_tiny_checkpoint
from test_safe_loading import CreatesAFile


@pytest.fixture(scope="module")
def collection(tmp_path_factory, tiny_bert_dir) -> dict:
    folder = tmp_path_factory.mktemp("serve")
    checkpoint = write_tiny_checkpoint(folder / "tiny.ckpt", tiny_bert_dir)
    outside = folder / "outside.png"  # a real image outside the collection, linked into it
    Image.new("L", (64, 64), 200).save(outside)
    (folder / "images").mkdir()
    (folder / "images" / "link_out.png").symlink_to(outside)
    index = index_collection(folder / "images", checkpoint, folder / "images.index.pt")
    return {"folder": folder, "checkpoint": checkpoint, "index": index, "index_file": folder / "images.index.pt"}


@pytest.fixture(scope="module")
def served(collection):
    explorer = Explorer(ExplorerSettings(collection["index_file"], max_upload_bytes=300_000))
    with background_server(create_app(explorer)) as url:
        yield {**collection, "explorer": explorer, "url": url}
    explorer.close()


def request(url: str, path: str, method: str = "GET", body: bytes | None = None, host: str | None = None):
    """(status, headers, body) for ``path`` sent verbatim."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    headers = {"Host": host} if host else {}
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, dict(response.getheaders()), data


def get_json(url: str, path: str, method: str = "GET", body: bytes | None = None) -> tuple[int, dict]:
    status, headers, data = request(url, path, method, body)
    assert headers["content-type"] == "application/json", (path, status, data[:200])
    return status, json.loads(data)


def row_of(index: ImageIndex, name: str) -> int:
    return index.paths.index(name)


# -- the command line -----------------------------------------------------------------------------------------------


def test_the_core_package_and_the_command_line_import_no_web_framework():
    code = "import sys, convirt.cli, convirt.analysis.search, convirt.api; print(sorted({m.split('.')[0] for m in "
    code += "sys.modules} & {'fastapi', 'uvicorn', 'starlette'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_serve_without_the_app_extra_says_what_to_install(monkeypatch, capsys, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    assert main(["serve", str(tmp_path / "x.index.pt")]) == 2
    err = capsys.readouterr().err.strip()
    expected = "convirt serve needs the app extra (uvicorn missing): pip install 'convirt[app]'"
    assert err == f"convirt serve: error: {expected}"


def test_serve_binds_loopback_by_default_and_warns_on_another_address(monkeypatch, capsys, collection):
    import convirt.app.server

    bound = []
    monkeypatch.setattr(convirt.app.server, "serve", lambda app, sock: bound.append(sock.getsockname()[0]))
    index_file = str(collection["index_file"])
    assert main(["serve", index_file, "--port", "0"]) == 0
    out, err = capsys.readouterr()
    assert bound == ["127.0.0.1"] and "warning" not in err
    assert f"index {index_file}: 10 images in v" in out and "convirt explorer: http://127.0.0.1:" in out
    assert main(["serve", index_file, "--port", "0", "--host", "0.0.0.0"]) == 0
    err = capsys.readouterr().err
    assert bound[-1] == "0.0.0.0" and "warning: serving on 0.0.0.0, not only on this machine" in err


def test_threads_sets_the_torch_thread_count(monkeypatch, capsys, collection):
    import convirt.app.server

    monkeypatch.setattr(convirt.app.server, "serve", lambda app, sock: None)
    before = torch.get_num_threads()
    try:
        assert main(["serve", str(collection["index_file"]), "--port", "0", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert main(["serve", str(collection["index_file"]), "--port", "0", "--threads", "0"]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err


def test_a_taken_port_is_one_line_before_any_model_loads(capsys, collection):
    with background_server(create_app(Explorer(ExplorerSettings(collection["index_file"])))) as url:
        port = urlsplit(url).port
        assert main(["serve", str(collection["index_file"]), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"convirt serve: error: cannot serve on 127.0.0.1:{port}") and "choose another port" in err
    assert len(err.splitlines()) == 1


def test_the_listening_socket_is_tcp_so_answers_are_not_held_back_by_nagle():
    from convirt.app.server import bind

    # asyncio turns Nagle's algorithm off only for sockets whose protocol is IPPROTO_TCP; with protocol 0 each answer
    # on a kept-alive connection (every request of a page after the first) waited for the client's delayed ACK
    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP and sock.getsockname()[1] > 0
    finally:
        sock.close()


def test_serve_images_builds_the_index_first(monkeypatch, capsys, collection, tmp_path):
    import convirt.app.server

    monkeypatch.setattr(convirt.app.server, "serve", lambda app, sock: None)
    output = tmp_path / "fresh.index.pt"
    images = collection["folder"] / "images"
    args = ["serve", str(output), "--images", str(images), "--checkpoint", str(collection["checkpoint"]), "--port", "0"]
    assert main(args) == 0
    assert f"indexed 10 images (v, (10, 32)) into {output}" in capsys.readouterr().out
    assert ImageIndex.load(output).paths == collection["index"].paths


# -- searching --------------------------------------------------------------------------------------------------------


def test_about_names_the_index_encoder_labels_and_features(served):
    status, about = get_json(served["url"], "/api/about")
    assert status == 200 and about["ok"] and about["images"] == 10 and about["space"] == "v" and about["dim"] == 32
    assert about["encoder_spec"] == str(served["checkpoint"]) and about["encoder_error"] == ""
    assert about["labels"] == {"Effusion": 4, "Normal": 4} and about["label_source"] == "test labels"
    assert about["built"] == served["index"].built and about["prompts"] == "builtin:chexpert"
    assert about["features"] == {"text": True, "upload": True, "saliency": True, "zeroshot": True}


def test_text_search_returns_k_hits_in_the_order_of_the_cosine_similarity(served):
    text = "A pleural effusion is present."
    status, result = get_json(served["url"], f"/api/search?text={quote(text)}&k=4")
    assert status == 200 and [h["rank"] for h in result["hits"]] == [1, 2, 3, 4]
    assert [h["name"] for h in result["hits"]] == text_ranking(served["index"], served["checkpoint"], text)[:4]
    scores = [h["score"] for h in result["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_similar_images_leave_the_query_out_and_find_the_planted_duplicate_first(served):
    index = served["index"]
    row = row_of(index, PLANTED)
    status, result = get_json(served["url"], f"/api/similar?row={row}&k=9")
    assert status == 200 and result["query"] == {"row": row, "name": PLANTED}
    names = [h["name"] for h in result["hits"]]
    assert names == image_ranking(index, row) and names[0] == DUPLICATE and PLANTED not in names
    assert result["hits"][0]["score"] > 0.999


def test_precision_at_k_of_a_label_and_the_label_filter(served):
    index, url = served["index"], served["url"]
    row = row_of(index, PLANTED)
    _, result = get_json(url, f"/api/similar?row={row}&k=5&label=Effusion")
    expected = image_ranking(index, row)[:5]
    matches = [index.labels[row_of(index, name)] == ["Effusion"] for name in expected]
    assert [h["name"] for h in result["hits"]] == expected and [h["match"] for h in result["hits"]] == matches
    assert result["precision"] == {"label": "Effusion", "k": 5, "relevant": sum(matches), "value": sum(matches) / 5}
    _, only = get_json(url, f"/api/similar?row={row}&k=10&label=Effusion&only=true")
    # the Effusion images are img1, img3, img5 and img7; img3 is the query and is left out
    assert only["candidates"] == 3 and {h["name"] for h in only["hits"]} == {"img1.png", "img5.png", "img7.png"}
    assert only["precision"] == {"label": "Effusion", "k": 3, "relevant": 3, "value": 1.0}


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/api/search?text=&k=3", "the query is empty: type a description of a finding"),
        ("/api/search?text=%20%20&k=3", "the query is empty"),
        ("/api/search?text=x&k=0", "bad request (k: Input should be greater than or equal to 1)"),
        ("/api/search?text=x&k=101", "bad request (k: Input should be less than or equal to 100)"),
        ("/api/search?text=x&k=ten", "bad request (k: Input should be a valid integer"),
        ("/api/search?text=x&label=Fracture", "unknown label 'Fracture'; the index's labels are: Effusion, Normal"),
        ("/api/search?text=x&only=true", "choose a label to show only the images that have it"),
        ("/api/similar?k=3", "name one image: an index row or an upload"),
        ("/api/saliency?row=1", "Grad-CAM explains a text query: type one first"),
    ],
)
def test_bad_requests_get_one_clear_message(served, path, message):
    status, body = get_json(served["url"], path)
    assert status == 400 and body["error"].startswith(message) and "Traceback" not in body["error"]


# -- what is served and what is refused ---------------------------------------------------------------------------


def test_an_indexed_image_is_served_as_a_png_re_encoded_from_its_pixels(served):
    row = row_of(served["index"], "img2.png")
    status, headers, data = request(served["url"], f"/api/image/{row}?size=32")
    assert status == 200 and headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (32, 32) and image.mode == "L"
    assert "script-src" not in headers["content-security-policy"]  # default-src 'self' covers scripts
    assert headers["content-security-policy"].startswith("default-src 'self'")
    assert headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    [
        "/api/image/../../../../etc/passwd",
        "/api/image/..%2F..%2F..%2F..%2Fetc%2Fpasswd",
        "/api/image/%2Fetc%2Fpasswd",
        "/api/image/-1",
        "/api/image/10",
        "/api/image?path=/etc/passwd",
        "/static/../explorer.py",
        "/static/..%2Fexplorer.py",
        "/static/%2e%2e/explorer.py",
        "/static//etc/passwd",
        "/etc/passwd",
    ],
)
def test_paths_outside_the_index_and_the_page_are_not_found(served, path):
    status, headers, data = request(served["url"], path)
    assert status in (400, 404, 422) and headers["content-type"] == "application/json"
    assert b"root:" not in data and b"import" not in data


def test_a_symbolic_link_out_of_the_collection_is_refused(served):
    row = row_of(served["index"], "link_out.png")
    status, body = get_json(served["url"], f"/api/image/{row}")
    assert status == 403 and "lies outside the indexed folder" in body["error"]
    assert get_json(served["url"], f"/api/saliency?row={row}&text=x")[0] == 403


def test_a_crafted_index_with_paths_out_of_its_folder_serves_none_of_them(collection, tmp_path):
    root = tmp_path / "collection"
    root.mkdir()
    Image.new("L", (64, 64), 10).save(root / "inside.png")
    Image.new("L", (64, 64), 10).save(tmp_path / "secret.png")
    paths = ["inside.png", "../secret.png", str(tmp_path / "secret.png"), "sub/../../secret.png"]
    embeddings = torch.nn.functional.normalize(torch.randn(len(paths), 32), dim=1)
    ImageIndex(str(root), paths, embeddings, "v", "random:resnet18", "").save(tmp_path / "crafted.index.pt")
    explorer = Explorer(ExplorerSettings(tmp_path / "crafted.index.pt"))
    try:
        assert explorer.image_file(0) == (root / "inside.png").resolve()
        for row in (1, 2, 3):
            with pytest.raises(RefusedError, match="lies outside the indexed folder"):
                explorer.image_png(ImageRef(row=row))
    finally:
        explorer.close()


def test_requests_for_another_host_name_are_refused(served):
    status, _, data = request(served["url"], "/api/about", host="attacker.example")
    assert status == 400 and b"Invalid host header" in data
    assert request(served["url"], "/api/about", host="localhost")[0] == 200


# -- uploads ------------------------------------------------------------------------------------------------------


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_uploaded_image_is_searched_and_kept_only_in_a_temporary_folder(served):
    url, explorer = served["url"], served["explorer"]
    data = (served["folder"] / "images" / PLANTED).read_bytes()
    status, result = get_json(url, "/api/upload?k=3", "POST", data)
    assert status == 200 and result["query"]["upload"].startswith("u")
    assert [h["name"] for h in result["hits"]][:2] in ([PLANTED, DUPLICATE], [DUPLICATE, PLANTED])
    upload = result["query"]["upload"]
    status, headers, png = request(url, f"/api/upload/{upload}/image?size=16")
    assert status == 200 and headers["content-type"] == "image/png" and Image.open(io.BytesIO(png)).size == (16, 16)
    stored = explorer._uploads[upload][0]
    assert stored.parent == explorer._uploads_dir and stored.is_relative_to(tempfile.gettempdir())
    assert get_json(url, "/api/upload/u999/image")[0] == 404


def _kept_uploads(explorer: Explorer) -> set[Path]:
    folder = explorer._uploads_dir
    return set() if folder is None else set(folder.iterdir())


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"", 400, "the upload is empty"),
        (b"#!/bin/sh\nrm -rf /\n", 400, "the uploaded file cannot be used: not a recognised image format"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, 400, "the uploaded file cannot be used"),
        (b"x" * 300_001, 413, "the upload is 300,001 bytes; at most 300,000 are accepted"),
    ],
)
def test_bad_uploads_are_refused_with_a_message(served, body, status, message):
    before = _kept_uploads(served["explorer"])
    got, result = get_json(served["url"], "/api/upload", "POST", body)
    assert got == status and result["error"].startswith(message)
    assert _kept_uploads(served["explorer"]) == before  # nothing kept


def test_a_decompression_bomb_upload_is_refused_before_decoding(served):
    side = int(MAX_UPLOAD_PIXELS**0.5) + 100
    bomb = _png_bytes(Image.new("1", (side, side)))  # a few kB that would decode to 40+ million pixels
    assert len(bomb) < 300_000
    status, result = get_json(served["url"], "/api/upload", "POST", bomb)
    assert status == 400 and f"{side} x {side} pixels is more than the 40,000,000 an upload may have" in result["error"]


def test_only_the_last_uploads_are_kept_and_the_temporary_folder_is_removed_on_close(collection, monkeypatch, tmp_path):
    import convirt.app.explorer

    monkeypatch.setattr(convirt.app.explorer, "KEPT_UPLOADS", 2)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where mkdtemp makes the uploads' folder
    explorer = Explorer(ExplorerSettings(collection["index_file"]))
    assert explorer._uploads_dir is None and not any(tmp_path.iterdir())  # no folder until something is uploaded
    rng = np.random.default_rng(1)
    uploads = [explorer.upload(_png_bytes(Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8))))
               for _ in range(3)]  # fmt: skip
    folder = explorer._uploads_dir
    assert sorted(p.name for p in folder.iterdir()) == uploads[1:]
    with pytest.raises(RequestError, match=f"upload '{uploads[0]}' is gone"):
        explorer.similar(ImageRef(upload=uploads[0]), 3)
    assert folder.parent == tmp_path
    explorer.close()
    assert not folder.exists() and not any(tmp_path.iterdir())


# -- explanations ---------------------------------------------------------------------------------------------------


def test_grad_cam_overlay_and_zero_shot_scores_of_an_indexed_image(served):
    from convirt.encoders.embedders import load_embedder
    from convirt.encoders.prompts import class_embeddings
    from convirt.evaluation.zeroshot import zero_shot_scores

    index, url = served["index"], served["url"]
    row = row_of(index, "img5.png")
    status, headers, data = request(url, f"/api/saliency?row={row}&text={quote('Pleural effusion.')}")
    assert status == 200 and headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(data)) as overlay:
        assert overlay.mode == "RGB" and overlay.size == (64, 64)
    embedder = load_embedder(str(served["checkpoint"]))
    cosine = float(index.embeddings[row] @ embedder.embed_texts(["Pleural effusion."])[0])
    assert float(headers["x-similarity"]) == pytest.approx(cosine, abs=1e-3)

    status, result = get_json(url, f"/api/zeroshot?row={row}")
    classes, class_emb = class_embeddings(embedder, read_prompts("builtin:chexpert"))
    similarity, probability = zero_shot_scores(index.embeddings[row][None], class_emb, 0.1)
    expected = sorted(zip(classes, probability[0].tolist()), key=lambda pair: -pair[1])
    assert [s["class"] for s in result["scores"]] == [name for name, _ in expected]
    cosines = dict(zip(classes, similarity[0].tolist()))
    assert [s["similarity"] for s in result["scores"]] == pytest.approx([cosines[n] for n, _ in expected], abs=1e-4)
    assert [s["probability"] for s in result["scores"]] == pytest.approx([p for _, p in expected], abs=1e-4)
    assert sum(s["probability"] for s in result["scores"]) == pytest.approx(1.0, abs=1e-3)


def test_builtin_chexpert_prompts_are_the_official_sentences(shared_data):
    official = read_prompts(shared_data / "convirt-retrieval" / "text_query.csv")
    assert read_prompts("builtin:chexpert") == official
    assert len(official) == 8 and all(len(sentences) == 5 for sentences in official.values())


# -- errors shown in the page, server still up -------------------------------------------------------------------


def test_a_bad_index_file_is_a_message_in_the_page_and_the_server_stays_up(tmp_path):
    broken = tmp_path / "broken.index.pt"
    broken.write_text("this is not an index")
    marker = tmp_path / "pwned"
    torch.save({"format": "convirt-image-index", "boom": CreatesAFile(marker)}, tmp_path / "evil.index.pt")
    cases = {
        broken: "is not a torch file (it holds text)",
        tmp_path / "missing.index.pt": "does not exist; build one from an image folder first",
        tmp_path / "evil.index.pt": "contains objects other than tensors and plain data",
    }
    for file, message in cases.items():
        explorer = Explorer(ExplorerSettings(file))
        with background_server(create_app(explorer)) as url:
            status, about = get_json(url, "/api/about")
            assert status == 200 and not about["ok"] and message in about["index_error"], about["index_error"]
            status, body = get_json(url, "/api/search?text=effusion")
            assert status == 503 and body["error"].startswith("the index could not be loaded: ")
            assert request(url, "/")[0] == 200 and request(url, "/static/app.js")[0] == 200
            assert get_json(url, "/api/about")[0] == 200  # still answering
        explorer.close()
    assert not marker.exists()


def test_a_checkpoint_of_another_encoder_is_a_message_and_image_search_still_works(collection, tiny_bert_dir, tmp_path):
    other = write_tiny_checkpoint(tmp_path / "other.ckpt", tiny_bert_dir, seed=1)
    explorer = Explorer(ExplorerSettings(collection["index_file"], checkpoint=str(other)))
    with background_server(create_app(explorer)) as url:
        _, about = get_json(url, "/api/about")
        assert about["ok"] and f"{other} is not the encoder that built the index" in about["encoder_error"]
        assert about["features"] == {"text": False, "upload": False, "saliency": False, "zeroshot": False}
        status, body = get_json(url, "/api/search?text=effusion")
        assert status == 503 and "text search needs the index's encoder, which is not available" in body["error"]
        status, result = get_json(url, f"/api/similar?row={row_of(collection['index'], PLANTED)}&k=1")
        assert status == 200 and result["hits"][0]["name"] == DUPLICATE  # stored embeddings need no encoder
    explorer.close()


def test_an_encoder_file_changed_since_the_index_was_built_is_a_message(tiny_bert_dir, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (64, 64), 90).save(folder / "a.png")
    checkpoint = write_tiny_checkpoint(tmp_path / "model.ckpt", tiny_bert_dir)
    build_index(folder, str(checkpoint), tmp_path / "a.index.pt", progress=False)
    write_tiny_checkpoint(checkpoint, tiny_bert_dir, seed=1)  # retrained in place
    explorer = Explorer(ExplorerSettings(tmp_path / "a.index.pt"))
    assert explorer.encoder_error.startswith(f"the encoder {checkpoint} changed since the index was built")
    with pytest.raises(RequestError, match="text search needs the index's encoder, which is not available"):
        explorer.text_search("effusion", 1)
    explorer.close()


def test_an_index_of_an_image_only_encoder_searches_by_image_and_says_why_not_by_text(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for value in (40, 120, 200):
        Image.new("L", (32, 32), value).save(folder / f"v{value}.png")
    build_index(folder, "random:resnet18", tmp_path / "plain.index.pt", progress=False)
    explorer = Explorer(ExplorerSettings(tmp_path / "plain.index.pt"))
    try:
        about = explorer.about()
        assert about["space"] == "h_v" and about["encoder_error"] == ""
        assert about["features"] == {"text": False, "upload": True, "saliency": False, "zeroshot": False}
        with pytest.raises(RequestError, match=r"text search needs a ConVIRT checkpoint .* an image-only encoder"):
            explorer.text_search("effusion", 2)
        with pytest.raises(RequestError, match="zero-shot classification needs a ConVIRT checkpoint"):
            explorer.zero_shot(ImageRef(row=0))
        expected = image_ranking(ImageIndex.load(tmp_path / "plain.index.pt"), 0)  # row 0 is v120.png
        assert [h["name"] for h in explorer.similar(ImageRef(row=0), 2)["hits"]] == expected
        assert sorted(expected) == ["v200.png", "v40.png"]
    finally:
        explorer.close()


def test_an_unexpected_error_is_a_message_and_the_server_stays_up(collection, monkeypatch):
    explorer = Explorer(ExplorerSettings(collection["index_file"]))
    logged = []

    def fail(query):
        raise RuntimeError("boom")

    monkeypatch.setattr(explorer, "zero_shot", fail)
    with background_server(create_app(explorer, log=logged.append)) as url:
        status, body = get_json(url, "/api/zeroshot?row=1")
        assert status == 500 and body["error"] == "internal error (RuntimeError: boom); the server keeps running"
        assert get_json(url, "/api/about")[0] == 200
    assert "Traceback" in logged[0] and "/api/zeroshot" in logged[0]
    explorer.close()
