"""Paired dataset: one sampled sentence and one sampled image per draw, reproducible, bad images handled."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from convirt.data.manifest import read_paired_manifest
from convirt.data.paired import PairedCollator, PairedDataset
from convirt.data.sampling import ResumableStreamSampler, ShardedEvalSampler
from convirt.data.transforms import AugmentationParams, paper_augmentation, resize_transform
from convirt.errors import ImageLoadError


@pytest.fixture()
def manifest_path(tmp_path: Path) -> Path:
    for i, value in enumerate((30, 90, 150, 210)):
        Image.fromarray(np.full((40, 50), value, dtype=np.uint8)).save(tmp_path / f"img{i}.png")
    rows = [
        {
            "images": "img0.png|img1.png",
            "text": "First sentence here.\nSecond sentence here.\nThird one here.",
            "patient_id": "p0",
            "study_id": "s0",
            "split": "train",
        },
        {"images": "img2.png", "text": "Only sentence.", "patient_id": "p1", "study_id": "s1", "split": "train"},
        {"images": "img3.png", "text": "Another report.", "patient_id": "p2", "study_id": "s2", "split": "train"},
    ]
    path = tmp_path / "manifest.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_one_sentence_and_one_image_sampled_uniformly_per_draw(manifest_path: Path) -> None:
    dataset = PairedDataset(read_paired_manifest(manifest_path), resize_transform(16))
    sentences, images = Counter(), Counter()
    for seed in range(600):
        sample = dataset[(0, seed)]
        sentences[sample["text"]] += 1
        images[round(float(sample["image"][0].mean()), 2)] += 1
    assert set(sentences) == {"First sentence here.", "Second sentence here.", "Third one here."}
    assert all(150 < count < 250 for count in sentences.values())  # ~200 each
    assert len(images) == 2 and all(240 < count < 360 for count in images.values())  # ~300 each


def test_draws_are_reproducible_from_index_and_seed(manifest_path: Path) -> None:
    dataset = PairedDataset(read_paired_manifest(manifest_path), paper_augmentation(AugmentationParams(output_size=24)))
    a, b, c = dataset[(0, 11)], dataset[(0, 11)], dataset[(0, 12)]
    assert a["text"] == b["text"]
    torch.testing.assert_close(a["image"], b["image"])
    assert not torch.equal(a["image"], c["image"])


def test_bad_image_fail_names_file_and_row_skip_substitutes(manifest_path: Path, tmp_path: Path) -> None:
    (tmp_path / "img2.png").write_bytes(b"garbage")
    manifest = read_paired_manifest(manifest_path)
    failing = PairedDataset(manifest, resize_transform(16), on_bad_image="fail")
    with pytest.raises(ImageLoadError, match=r"img2\.png: not a recognised image format \[row 2 \(study s1\)"):
        failing[(1, 0)]
    skipping = PairedDataset(manifest, resize_transform(16), on_bad_image="skip")
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        sample = skipping[(1, 0)]
    assert sample["index"] != 1 and sample["skipped"] == [str(tmp_path / "img2.png")]


def test_collate_tokenises_and_pads(manifest_path: Path, tiny_bert_dir: Path) -> None:
    from transformers import AutoTokenizer

    dataset = PairedDataset(read_paired_manifest(manifest_path), resize_transform(16))
    batch = PairedCollator(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), max_length=6)(
        [dataset[(0, 1)], dataset[(1, 2)]]
    )
    assert batch["images"].shape == (2, 3, 16, 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 6
    assert batch["attention_mask"][1].sum() < batch["attention_mask"][0].sum() or batch["input_ids"].shape[1] == 6


def test_stream_sampler_resumes_at_any_position_and_shards() -> None:
    full = ResumableStreamSampler(10, seed=3)
    stream = [x for _, x in zip(range(35), iter(full))]
    resumed = ResumableStreamSampler(10, seed=3, start=17)
    assert [x for _, x in zip(range(18), iter(resumed))] == stream[17:]
    epoch0 = sorted(i for i, _ in stream[:10])
    assert epoch0 == list(range(10))  # each epoch is a permutation
    assert [i for i, _ in stream[:10]] != [i for i, _ in stream[10:20]]  # reshuffled per epoch
    ranks = [[i for _, (i, _) in zip(range(5), iter(ResumableStreamSampler(10, 3, r, 2)))] for r in range(2)]
    assert sorted(ranks[0] + ranks[1]) == epoch0  # two processes split one epoch without overlap
    assert set(ranks[0]).isdisjoint(ranks[1])


def test_w_processes_at_batch_b_draw_the_pairs_and_seeds_of_one_process_at_w_times_b() -> None:
    def stream(size: int, rank: int = 0, world: int = 1, n: int = 60) -> list[tuple[int, int]]:
        return [x for _, x in zip(range(n), iter(ResumableStreamSampler(size, 5, rank, world)))]

    world, batch = 3, 2
    for size, same in ((12, True), (13, False)):  # 13 pairs: each epoch drops 13 mod 3 = 1 to keep 3 processes even
        one = stream(size, n=10 * world * batch)
        shards = [stream(size, rank, world, n=10 * batch) for rank in range(world)]
        steps = [
            sorted(x for shard in shards for x in shard[k * batch : (k + 1) * batch])
            == sorted(one[k * world * batch : (k + 1) * world * batch])
            for k in range(10)  # 10 steps: 5 epochs of 12 pairs
        ]
        assert all(steps) if same else not all(steps)


def test_eval_sampler_is_a_seeded_permutation_the_same_for_any_process_count() -> None:
    def indices(size: int, rank: int = 0, world: int = 1, seed: int = 0) -> list[int]:
        return [i for i, _ in ShardedEvalSampler(size, rank, world, seed)]

    order = indices(50, seed=7)
    assert sorted(order) == list(range(50))  # every pair exactly once
    assert order != list(range(50))  # not manifest order
    assert indices(50, seed=7) == order  # a pure function of the seed
    assert indices(50, seed=8) != order
    for world in (2, 3):
        shards = [indices(50, r, world, seed=7) for r in range(world)]
        assert len({len(shard) for shard in shards}) == 1  # equal lengths: processes stay in step
        interleaved = [shard[k] for k in range(len(shards[0])) for shard in shards]
        assert interleaved[:50] == order  # the same permutation, dealt out round-robin
        assert interleaved[50:] == order[: len(interleaved) - 50]  # padding repeats its first items
    # With gathered negatives, the k-th batches of 2 processes at batch 5 are the k-th batch of 1 process at 10.
    shards = [indices(50, r, 2, seed=7) for r in range(2)]
    for k in range(5):
        assert sorted(shards[0][5 * k : 5 * k + 5] + shards[1][5 * k : 5 * k + 5]) == sorted(
            order[10 * k : 10 * k + 10]
        )
    seeds = {index: seed for index, seed in ShardedEvalSampler(50, 0, 1, 7)}
    assert all(seeds[i] == s for r in range(3) for i, s in ShardedEvalSampler(50, r, 3, 7))  # seed follows the pair
    assert indices(2, 2, 5) and len(indices(2, 4, 5)) == 1  # fewer pairs than processes: still one each


def test_validation_batches_mix_patients_so_near_duplicates_are_not_the_negatives(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """4 patients x 4 near-duplicate pairs, adjacent in the manifest. Scored by an oracle that embeds each pair as
    its patient, a batch of 4 that is one patient has all logits equal: loss ln 4 exactly, whatever the model. The
    validation loader's batches mix patients, so the same oracle scores well below that."""
    from transformers import AutoTokenizer

    from conftest import tiny_config
    from convirt.engine.data import PairedDataModule
    from convirt.losses import convirt_loss

    rows = []
    for patient in range(4):
        for k in range(4):
            name = f"p{patient}_{k}.png"
            Image.fromarray(np.full((20, 20), 30 + 60 * patient + k, dtype=np.uint8)).save(tmp_path / name)
            note = f"Patient {patient} has a cough."
            rows.append({"images": name, "text": note, "patient_id": f"p{patient}", "study_id": name, "split": "val"})
    rows.append({**rows[0], "split": "train"})
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    config = tiny_config(tmp_path / "manifest.csv", tmp_path / "run", tiny_bert_dir, data__batch_size=4)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_bert_dir))
    data = PairedDataModule(config, tokenizer)
    data.setup()

    def oracle_loss(batches) -> float:
        losses = []
        for batch in batches:
            patients = batch["index"] // 4  # val rows 4p..4p+3 are patient p
            embeddings = torch.nn.functional.one_hot(patients, 4).float()
            losses.append(convirt_loss(embeddings, embeddings).item())
        return sum(losses) / len(losses)

    collate = PairedCollator(tokenizer, config.model.max_length)
    assert data.val_set is not None
    ordered = [collate([data.val_set[(i, 0)] for i in range(s, s + 4)]) for s in range(0, 16, 4)]
    assert oracle_loss(ordered) == pytest.approx(np.log(4), abs=1e-6)  # manifest order: chance, uninformative
    permuted = list(data.val_dataloader())
    assert sorted(int(i) for b in permuted for i in b["index"]) == list(range(16))
    assert oracle_loss(permuted) < np.log(4) - 0.3
