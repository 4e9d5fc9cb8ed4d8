"""Files a user was sent load safely: a crafted pickle is refused at every entry point and never runs, and a
checkpoint's tokenizer files are written only under allow-listed plain names inside a temporary folder."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path

import pytest
import torch

from conftest import write_image_folder
from convirt.analysis.search import ImageIndex
from convirt.api import ConvirtEncoder, load_image_encoder
from convirt.cli import main
from convirt.encoders.checkpoint import load_checkpoint, load_model
from convirt.encoders.spec import parse_specs
from convirt.errors import CheckpointError, UnsafeFileError
from test_retrieval_support import write_tiny_checkpoint

REFUSED = "contains objects other than tensors and plain data"


class CreatesAFile:
    """Unpickling this (with a plain ``pickle.load`` or ``torch.load(weights_only=False)``) creates ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


@pytest.fixture()
def evil(tmp_path: Path, marker: Path) -> dict[str, Path]:
    """The same payload as a checkpoint, an index file and a state-dict weights file; plus a raw pickle."""
    payload = {"convirt": {"config": {}}, "state_dict": {"x": torch.zeros(1)}, "boom": CreatesAFile(marker)}
    files = {name: tmp_path / name for name in ("evil.ckpt", "evil.index.pt", "evil-weights.pt")}
    for file in files.values():
        torch.save(payload, file)
    files["raw.ckpt"] = tmp_path / "raw.ckpt"
    files["raw.ckpt"].write_bytes(pickle.dumps(payload, protocol=2))
    return files


@pytest.fixture(autouse=True)
def the_payload_is_live(evil: dict[str, Path], marker: Path):
    """Each test must leave the marker absent; afterwards, prove the files really would have created it."""
    yield
    assert not marker.exists(), "a crafted file ran code"
    torch.load(evil["evil.ckpt"], weights_only=False)  # what convirt never does
    assert marker.exists()


def _images(folder: Path) -> Path:
    return write_image_folder(folder, {"train": 8, "test": 4}, size=(20, 24))


def _one_clear_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and "error:" in lines[-1]
    return lines[-1]


def test_library_entry_points_refuse(evil: dict[str, Path]):
    for name in ("evil.ckpt", "raw.ckpt"):
        with pytest.raises(UnsafeFileError, match=REFUSED) as error:
            load_checkpoint(evil[name])
        assert isinstance(error.value, CheckpointError) and "\n" not in str(error.value)
        assert "convirt does not run code from files" in str(error.value)
    with pytest.raises(UnsafeFileError, match=REFUSED):
        ConvirtEncoder.from_checkpoint(evil["evil.ckpt"])
    with pytest.raises(UnsafeFileError, match=REFUSED):
        load_model(evil["evil.ckpt"])
    with pytest.raises(UnsafeFileError, match=REFUSED):
        load_image_encoder(str(evil["evil.ckpt"]))
    with pytest.raises(UnsafeFileError, match=REFUSED):
        load_image_encoder(f"resnet18={evil['evil-weights.pt']}")
    with pytest.raises(UnsafeFileError, match=REFUSED):
        ImageIndex.load(evil["evil.index.pt"])


def test_export_index_and_search_commands_refuse(evil: dict[str, Path], tmp_path: Path, capsys):
    assert main(["export", str(evil["evil.ckpt"]), str(tmp_path / "export")]) == 2
    assert REFUSED in _one_clear_line(capsys) and not (tmp_path / "export").exists()
    images = _images(tmp_path / "images")
    index_file = tmp_path / "images.index.pt"
    assert main(["index", str(images), "--checkpoint", str(evil["evil.ckpt"]), "-o", str(index_file)]) == 2
    assert REFUSED in _one_clear_line(capsys) and not index_file.exists()
    assert main(["search", str(evil["evil.index.pt"]), "Pneumonia."]) == 2
    assert REFUSED in _one_clear_line(capsys)

    # A well-formed index whose stored encoder points at the crafted checkpoint: search says what it loads.
    good = ImageIndex(
        str(images), ["train/NORMAL/person0_train_NORMAL.png"], torch.ones(1, 4) / 2, "v", str(evil["evil.ckpt"]), "0"
    )
    good.save(tmp_path / "good.index.pt")
    assert main(["search", str(tmp_path / "good.index.pt"), "Pneumonia."]) == 2
    err = capsys.readouterr().err
    assert f"loading the encoder stored in the index: {evil['evil.ckpt']}" in err
    assert REFUSED in err and "Traceback" not in err and len(err.strip().splitlines()) == 2


def test_evaluation_commands_refuse(evil: dict[str, Path], tmp_path: Path, capsys):
    data = _images(tmp_path / "data")
    classify = ["evaluate", "classify", "--dataset", f"imagefolder:{data}", "--val-size", "0.25", "-o", str(tmp_path)]
    assert main([*classify, "--encoder", str(evil["evil.ckpt"])]) == 2
    assert REFUSED in _one_clear_line(capsys)
    assert main([*classify, "--encoder", f"resnet18={evil['evil-weights.pt']}"]) == 2
    assert REFUSED in _one_clear_line(capsys)
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("label,text\nNORMAL,Clear lungs.\nPNEUMONIA,Pneumonia.\n")
    zeroshot = ["evaluate", "zeroshot", "--dataset", str(data), "--prompts", str(prompts), "-o", str(tmp_path / "z")]
    assert main([*zeroshot, "--encoder", str(evil["raw.ckpt"])]) == 2
    assert REFUSED in _one_clear_line(capsys)
    assert main([*zeroshot, "--encoder", f"random-like:{evil['evil.ckpt']}"]) == 2
    assert REFUSED in _one_clear_line(capsys)


def test_resuming_from_a_crafted_checkpoint_is_refused(evil: dict[str, Path], tmp_path: Path, capsys, tiny_bert_dir):
    images = _images(tmp_path / "images")
    rows = ["images,text,patient_id,study_id,split"]
    for i, image in enumerate(sorted(images.rglob("*.png"))):
        rows.append(f"{image},Heart size is normal number {i}.,p{i},s{i},{'val' if i % 4 == 0 else 'train'}")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(rows) + "\n")
    code = main(
        [
            "pretrain",
            f"data.manifest={manifest}",
            "data.batch_size=2",
            "data.num_workers=0",
            "data.augment.output_size=32",
            "data.augment.blur_kernel_size=5",
            "model.image_encoder=resnet18",
            "model.image_weights=none",
            f"model.text_encoder={tiny_bert_dir}",
            "model.freeze_layers=2",
            "train.progress_bar=false",
            "train.tensorboard=false",
            "train.precision=32",
            f"train.output_dir={tmp_path / 'run'}",
            f"train.resume={evil['evil.ckpt']}",
        ]
    )
    assert code == 2 and REFUSED in _one_clear_line(capsys)
    assert not (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()


@pytest.mark.parametrize("name", ["../../evil", "ABSOLUTE"])
def test_tokenizer_files_outside_the_allow_list_are_refused(name, tmp_path, tiny_bert_dir, monkeypatch):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    data = torch.load(checkpoint, weights_only=True)
    target = tmp_path / "abs-evil" if name == "ABSOLUTE" else tmp_path / "evil"
    stored = str(target) if name == "ABSOLUTE" else name
    data["convirt"]["tokenizer_files"][stored] = b"written outside the temporary folder"
    torch.save(data, checkpoint)
    # Temporary folders go to tmp_path/a/tmpXXXX, so "../../evil" would land exactly on ``target``.
    nested = tmp_path / "a"
    nested.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(nested))
    assert load_checkpoint(checkpoint).payload["tokenizer_files"][stored]  # passes weights_only
    with pytest.raises(CheckpointError, match="only the plain names") as error:
        load_model(checkpoint)
    assert repr(stored) in str(error.value)
    assert not target.exists() and not any(nested.iterdir())
    with pytest.raises(CheckpointError, match="only the plain names"):
        ConvirtEncoder.from_checkpoint(checkpoint)
    assert not target.exists()


def test_real_checkpoints_load_and_the_allow_list_covers_their_tokenizer(tmp_path, tiny_bert_dir):
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    loaded = load_checkpoint(checkpoint)
    assert loaded.objective == "convirt" and loaded.payload["tokenizer_files"]
    encoder = ConvirtEncoder.from_checkpoint(loaded, device="cpu", fast=False)
    assert encoder.encode_texts(["No pleural effusion."]).shape == (1, 32)
    # Several specifications of one file read it once.
    trained, random_like, other = parse_specs([str(checkpoint), f"random-like:{checkpoint}", "random:resnet18"])
    assert trained.checkpoint() is random_like.checkpoint() and other.init == "random"


def test_an_export_folder_with_a_text_tower_loads_tensors_only(tmp_path: Path, evil, marker, tiny_bert_dir) -> None:
    import shutil

    from convirt.encoders.embedders import load_embedder
    from convirt.encoders.export import export_checkpoint

    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.ckpt", tiny_bert_dir)
    export_checkpoint(checkpoint, tmp_path / "export")
    exported = load_embedder(str(tmp_path / "export"), device="cpu", fast=False)
    original = ConvirtEncoder.from_checkpoint(checkpoint, device="cpu", fast=False)
    assert isinstance(exported, ConvirtEncoder) and exported.spaces == ("h_v", "v")  # heads and text tower come back
    torch.testing.assert_close(exported.encode_texts(["No effusion."]), original.encode_texts(["No effusion."]))

    heads = shutil.copytree(tmp_path / "export", tmp_path / "pickled-heads")
    shutil.copy(evil["evil-weights.pt"], heads / "heads.pt")
    with pytest.raises(UnsafeFileError, match=REFUSED):
        load_embedder(str(heads))
    text = shutil.copytree(tmp_path / "export", tmp_path / "pickled-text")
    for weights in (text / "text_encoder").glob("*.safetensors*"):
        weights.unlink()
    torch.save({"boom": CreatesAFile(marker)}, text / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="exported text encoder cannot be read"):
        load_embedder(str(text))
