"""End-to-end pretraining on real pairs: the loss goes down, a killed run resumes exactly, checkpoints export."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import tiny_config
from convirt.api import ConvirtEncoder, load_image_encoder
from convirt.cli import main as cli_main
from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedCollator, PairedDataset
from convirt.data.views import image_transforms
from convirt.encoders.checkpoint import load_model
from convirt.encoders.export import export_checkpoint
from convirt.engine.train import pretrain
from convirt.losses import convirt_loss
from convirt.objectives import build_objective

pytestmark = pytest.mark.slow


def fixed_batch_loss(model, config, tokenizer, manifest_path: Path, pairs: int = 8) -> float:
    """Mean loss over fixed training pairs: deterministic views and sentences, eval mode, no gradient."""
    manifest = read_paired_manifest(manifest_path, split="train")
    dataset = PairedDataset(manifest, image_transforms(config, train=False))
    collate = PairedCollator(tokenizer, config.model.max_length)
    model.eval()
    losses = []
    with torch.no_grad():
        for start in range(0, pairs, 8):
            batch = collate([dataset[(i, i)] for i in range(start, start + 8)])
            out = model(batch["images"], batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))
            losses.append(convirt_loss(out.image_embeddings, out.text_embeddings).item())
    return sum(losses) / len(losses)


@pytest.fixture(scope="module")
def small_manifest(tmp_path_factory, covid_prepared: Path) -> Path:
    """8 real training pairs (and 16 validation pairs) of the prepared COVID-19 set: each step is one epoch."""
    import pandas as pd

    frame = pd.read_csv(covid_prepared, dtype=str, keep_default_na=False)
    frame["images"] = ["|".join(str(covid_prepared.parent / p) for p in cell.split("|")) for cell in frame["images"]]
    subset = pd.concat([frame[frame["split"] == "train"].head(8), frame[frame["split"] == "val"].head(16)])
    path = tmp_path_factory.mktemp("small") / "manifest.csv"
    subset.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, small_manifest: Path, minilm_dir: Path):
    """A short real run: ResNet18 + the real MiniLM text tower on COVID-19 X-rays and notes, 40 steps."""
    output = tmp_path_factory.mktemp("covid-run")
    config = tiny_config(
        small_manifest,
        output,
        minilm_dir,
        train__val_every_steps=20,
        train__max_evals=2,
        model__freeze_layers=3,
        data__num_workers=2,
        train__checkpoint_every_steps=10,
        optim__lr=5e-4,
    )
    from convirt.encoders.build import create_model, create_tokenizer

    torch.manual_seed(config.train.seed)
    tokenizer = create_tokenizer(config)
    initial = fixed_batch_loss(create_model(config), config, tokenizer, small_manifest)
    result = pretrain(config, build_objective)
    return config, result, initial, tokenizer


def test_pretraining_on_real_pairs_lowers_the_loss(trained_run, small_manifest: Path) -> None:
    config, result, initial, tokenizer = trained_run
    trained = load_model(result.last_checkpoint)
    after = fixed_batch_loss(trained.model, config, tokenizer, small_manifest)
    # ln 8 = 2.08 is chance for a batch of 8: after 40 epochs the training pairs are matched far better than that.
    assert after < initial - 0.3 and after < math.log(8) - 0.3, (initial, after)
    assert result.steps == 40 and result.best_val_loss is not None


def test_run_writes_checkpoints_logs_curve_and_summary(trained_run) -> None:
    _, result, _, _ = trained_run
    out = result.output_dir
    for name in ("config.yaml", "checkpoints/best.ckpt", "checkpoints/last.ckpt", "loss_curve.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "loss_curve.png").stat().st_size > 5000
    assert not list((out / "checkpoints").glob("eval-*.ckpt"))  # train.keep_checkpoints=best_last (the default)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 40 and summary["train_pairs"] == 8 and summary["skipped_images"] == 0
    metrics = (out / "logs" / "version_0" / "metrics.csv").read_text()
    assert "train/loss" in metrics and "val/loss" in metrics
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["convirt"]["config"]["model"]["image_encoder"] == "resnet18"
    assert "tokenizer_config.json" in checkpoint["convirt"]["tokenizer_files"]


def test_export_and_python_api(trained_run, tmp_path: Path, small_manifest: Path) -> None:
    _, result, _, _ = trained_run
    written = export_checkpoint(result.best_checkpoint, tmp_path / "export")
    encoder = ConvirtEncoder.from_checkpoint(result.best_checkpoint, device="cpu", fast=False)
    manifest = read_paired_manifest(small_manifest, split="val")
    paths = [manifest.images.item(i, 0) for i in range(3)]

    # Image side: the exported state dict in plain torchvision gives the same h_v as the API.
    reference = torchvision.models.resnet18()
    missing = reference.load_state_dict(torch.load(written["image_encoder"], weights_only=True), strict=False)
    assert sorted(missing.missing_keys) == ["fc.bias", "fc.weight"]
    reference.fc = torch.nn.Identity()
    reference.eval()
    batch = torch.stack([encoder.preprocess(p) for p in paths])
    with torch.no_grad():
        expected = torch.nn.functional.normalize(reference(batch), dim=-1)
    features = encoder.encode_images(paths, batch_size=2, project=False)
    torch.testing.assert_close(features, expected, rtol=1e-4, atol=1e-5)
    embeddings = encoder.encode_images(paths, batch_size=2)
    assert embeddings.shape == (3, 32) and torch.allclose(embeddings.norm(dim=1), torch.ones(3))
    assert not encoder.model.training and not embeddings.requires_grad

    # Text side: the Hugging Face folder reloads, and the API embeds sentences.
    from transformers import AutoModel, AutoTokenizer

    AutoModel.from_pretrained(written["text_encoder"])
    AutoTokenizer.from_pretrained(written["text_encoder"])
    texts = encoder.encode_texts(["No pleural effusion.", "Bilateral opacities.", "Heart size normal."])
    assert texts.shape == (3, 32)
    heads = torch.load(written["heads"], weights_only=True)
    assert set(heads) == {"image_head", "text_head", "config"}
    # Evaluation commands resolve the export folder and the checkpoint to the same image encoder.
    for spec in (str(tmp_path / "export"), str(result.best_checkpoint)):
        loaded = load_image_encoder(spec).eval()
        with torch.no_grad():
            torch.testing.assert_close(
                torch.nn.functional.normalize(loaded(batch), dim=-1), expected, rtol=1e-4, atol=1e-5
            )


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import lightning as L
    sys.path.insert(0, {tests!r})
    from conftest import tiny_config
    from convirt.engine.train import pretrain
    from convirt.objectives import build_objective

    class KillAt(L.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no final checkpoint: a real crash

    config = tiny_config({manifest!r}, {output!r}, {text!r}, train__keep_checkpoints="every_eval")
    pretrain(config, build_objective, extra_callbacks=[KillAt()])
    """
)


def test_killed_run_resumes_to_the_same_state(covid_prepared: Path, tiny_bert_dir: Path, tmp_path: Path) -> None:
    # Uninterrupted: 8 steps, validation at 4 and 8, last.ckpt every 2 steps, a checkpoint kept per evaluation.
    keep = {"train__keep_checkpoints": "every_eval"}
    straight = pretrain(tiny_config(covid_prepared, tmp_path / "straight", tiny_bert_dir, **keep), build_objective)

    # Killed with SIGKILL after step 5 (last.ckpt holds step 4), then resumed by running the same config again.
    killed_dir = tmp_path / "killed"
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent),
        kill_at=5,
        manifest=str(covid_prepared),
        output=str(killed_dir),
        text=str(tiny_bert_dir),
    )
    process = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    partial = torch.load(killed_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert partial["global_step"] == 4
    assert sorted(p.name for p in (killed_dir / "checkpoints").glob("eval-*.ckpt")) == ["eval-0001.ckpt"]
    resumed = pretrain(tiny_config(covid_prepared, killed_dir, tiny_bert_dir, **keep), build_objective)
    assert resumed.resumed_from == killed_dir / "checkpoints" / "last.ckpt" and resumed.steps == 8

    a = torch.load(straight.last_checkpoint, map_location="cpu", weights_only=True)
    b = torch.load(resumed.last_checkpoint, map_location="cpu", weights_only=True)
    assert a["global_step"] == b["global_step"] == 8
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    state_a, state_b = a["optimizer_states"][0]["state"], b["optimizer_states"][0]["state"]
    for index in state_a:
        torch.testing.assert_close(state_b[index]["exp_avg"], state_a[index]["exp_avg"], rtol=1e-6, atol=1e-8)
    assert a["convirt_state"]["plateau"] == b["convirt_state"]["plateau"]
    assert a["convirt_state"]["evaluations"] == b["convirt_state"]["evaluations"] == 2
    assert straight.best_val_loss == pytest.approx(resumed.best_val_loss, rel=1e-6)
    assert (killed_dir / "logs" / "version_1" / "metrics.csv").is_file()  # the resumed session's log

    # The kept checkpoints: weights only, one per evaluation, the same whether the run was killed or not; the last
    # one holds the final weights.
    for name, step in (("eval-0001.ckpt", 4), ("eval-0002.ckpt", 8)):
        kept_a = torch.load(straight.output_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        kept_b = torch.load(killed_dir / "checkpoints" / name, map_location="cpu", weights_only=True)
        assert kept_a["global_step"] == kept_b["global_step"] == step and "optimizer_states" not in kept_a
        assert kept_a["convirt"]["config"]["train"]["keep_checkpoints"] == "every_eval"
        for key, value in kept_a["state_dict"].items():
            torch.testing.assert_close(kept_b["state_dict"][key], value, rtol=1e-6, atol=1e-7, msg=key)
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(kept_a["state_dict"][key], value, msg=key)


def test_lr_is_halved_after_patience_evaluations_without_improvement(covid_prepared, tiny_bert_dir, tmp_path):
    # Every validation pair is the same image and sentence: all logits of a batch are equal, so the validation loss
    # is ln(8) at every evaluation whatever the weights (training still moves BatchNorm statistics, even at lr ~0).
    import pandas as pd

    frame = pd.read_csv(covid_prepared, dtype=str, keep_default_na=False)
    frame["images"] = ["|".join(str(covid_prepared.parent / p) for p in cell.split("|")) for cell in frame["images"]]
    val = frame["split"] == "val"
    first = frame[val].iloc[0]
    frame.loc[val, "images"], frame.loc[val, "text"] = first["images"].split("|")[0], first["text"].splitlines()[0]
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    config = tiny_config(
        manifest,
        tmp_path / "plateau",
        tiny_bert_dir,
        optim__lr=1e-12,
        train__val_every_steps=1,
        train__max_evals=4,
        train__plateau_patience=1,
        train__checkpoint_every_steps=100,
    )
    result = pretrain(config, build_objective)
    checkpoint = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    lr = checkpoint["optimizer_states"][0]["param_groups"][0]["lr"]
    # evaluations 1 (best), then 2, 3, 4: each a straight evaluation without a decrease -> halved at each
    assert result.best_val_loss == pytest.approx(math.log(8), abs=1e-5)
    assert lr == pytest.approx(1e-12 * 0.5**3, rel=1e-6, abs=0)
    assert checkpoint["convirt_state"]["plateau"] == {
        "best": pytest.approx(result.best_val_loss),
        "bad_evaluations": 3,
        "reductions": 3,
    }


def write_csv(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_cli_reports_user_errors_without_a_traceback(tmp_path: Path, capsys, tiny_bert_dir: Path) -> None:
    code = cli_main(
        [
            "pretrain",
            f"data.manifest={tmp_path / 'none.csv'}",
            "model.image_weights=none",
            f"model.text_encoder={tiny_bert_dir}",
            f"train.output_dir={tmp_path / 'out'}",
        ]
    )
    assert code == 2 and "none.csv does not exist" in capsys.readouterr().err
    bad = write_csv(tmp_path / "bad.csv", "image,report\na.png,text\n")
    code = cli_main(
        [
            "pretrain",
            f"data.manifest={bad}",
            "model.image_weights=none",
            "model.image_encoder=resnet18",
            f"model.text_encoder={tiny_bert_dir}",
            f"train.output_dir={tmp_path / 'out'}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "missing column(s)" in err and "Traceback" not in err
    from PIL import Image

    Image.new("L", (32, 32), 128).save(tmp_path / "x.png")
    good = write_csv(
        tmp_path / "good.csv",
        """
        images,text,patient_id,study_id,split
        x.png,Heart size is normal.,p1,s1,train
        x.png,No pleural effusion.,p2,s2,val
        """,
    )
    code = cli_main(
        [
            "pretrain",
            "model.freeze_layers=9",
            "model.image_weights=none",
            "model.image_encoder=resnet18",
            f"model.text_encoder={tiny_bert_dir}",
            f"data.manifest={good}",
        ]
    )
    assert code == 2 and "freeze_layers=9 but the text encoder has 4 layers" in capsys.readouterr().err
    assert cli_main(["export", str(bad), str(tmp_path / "x")]) == 2
    assert "is not a torch file (it holds text)" in capsys.readouterr().err


def test_missing_images_fail_or_skip_as_configured(tmp_path: Path, covid_prepared: Path, tiny_bert_dir: Path):
    import pandas as pd

    frame = pd.read_csv(covid_prepared, dtype=str, keep_default_na=False)
    frame["images"] = ["|".join(str(covid_prepared.parent / p) for p in cell.split("|")) for cell in frame["images"]]
    frame.loc[frame.index[:3], "images"] = "/nonexistent/a.png"
    manifest = tmp_path / "manifest.csv"
    frame.to_csv(manifest, index=False)
    code = cli_main(
        [
            "pretrain",
            f"data.manifest={manifest}",
            "data.on_bad_image=fail",
            "model.image_weights=none",
            "model.image_encoder=resnet18",
            f"model.text_encoder={tiny_bert_dir}",
            f"train.output_dir={tmp_path / 'out'}",
            "train.progress_bar=false",
        ]
    )
    assert code == 2
    config = tiny_config(manifest, tmp_path / "skip", tiny_bert_dir, train__max_evals=1, data__on_bad_image="skip")
    result = pretrain(config, build_objective)
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert sum(summary["dropped_pairs_missing_images"].values()) == 3
