"""Build the two labelled manifests of the real-data experiment (docs/results/real-covid.md), reproducibly.

    python docs/results/real-covid/tasks.py --shared ../shared/data --prepared data/covid-real \
        --out runs/real-covid/tasks

1. ``kermany-tune.csv``: a tuning task that never touches Kermany's official test folder. Kermany's validation split
   (the 522 images `convirt evaluate classify` draws by patient from the official train folder, split seed 0) is
   its scored ("test") split; 600 other training images (whole patients, seeded) are split 500 / 100 by patient
   into probe-train and probe-validation. Pretraining settings are compared by this score only.
2. ``covidx-like.csv``: a COVIDx-like 3-class task (normal / pneumonia / COVID-19, accuracy). COVID-19 (and a few
   normal and other-pneumonia) images come from the covid-chestxray patients that pretraining never saw: the
   prepared manifest's test-split patients plus the patients without clinical notes (they have no pair). Every
   pretraining (train/val) patient is excluded, and so is any image whose file name or bytes equal a pretraining
   patient's image. The held-out patients are split 50 / 15 / 35 % (train / val / test) by patient; each split
   gets as many Kermany NORMAL and as many Kermany PNEUMONIA images as it has COVID-19 images (whole Kermany
   patients, train and val from Kermany's train folder, test from its test folder), so the classes are balanced.
   The ``source`` column says where each image comes from.

Both are canonical labelled manifests (``.task.json`` beside), read with ``--dataset manifest:PATH``. Counts go to
``tasks.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from convirt.data.labelled import LabelledTask, write_labelled_manifest
from convirt.data.sources import load_labelled_dataset
from convirt.prepare.sources.covid import FRONTAL_VIEWS
from convirt.data.splits import assign_splits

CLASSES = ["normal", "pneumonia", "COVID-19"]
NOT_A_CLASS = {"todo", "ards", ""}  # unlabelled, or a syndrome rather than a pneumonia


def covid_class(finding: str) -> str | None:
    text = str(finding).strip()
    if "COVID-19" in text:
        return "COVID-19"
    if text == "No Finding":
        return "normal"
    return None if text.lower() in NOT_A_CLASS else "pneumonia"


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def held_out_covid(covid_dir: Path, prepared: Path) -> tuple[pd.DataFrame, dict]:
    manifest = pd.read_csv(prepared / "manifest.csv", dtype=str, keep_default_na=False)
    seen = set(manifest.loc[manifest["split"].isin(["train", "val"]), "patient_id"])
    test_patients = set(manifest.loc[manifest["split"] == "test", "patient_id"])
    meta = pd.read_csv(covid_dir / "metadata.csv", dtype=str, keep_default_na=False)
    meta["path"] = [covid_dir / (f or "images") / n for f, n in zip(meta["folder"], meta["filename"], strict=True)]
    seen_rows = meta[meta["patientid"].str.strip().isin(seen)]
    seen_names = set(seen_rows["filename"])
    seen_hashes = {md5(p) for p in seen_rows["path"] if p.is_file()}
    frontal = meta[(meta["modality"].str.strip() == "X-ray") & meta["view"].str.strip().str.upper().isin(FRONTAL_VIEWS)]
    held = frontal[~frontal["patientid"].str.strip().isin(seen)].copy()
    held["label"] = held["finding"].map(covid_class)
    duplicate = held["filename"].isin(seen_names) | held["path"].map(lambda p: md5(p) in seen_hashes)
    stats = {
        "held_out_frontal_images": len(held),
        "dropped_same_image_as_a_pretraining_patient": int(duplicate.sum()),
        "dropped_unlabelled_finding": int((~duplicate & held["label"].isna()).sum()),
    }
    held = held[~duplicate & held["label"].notna()]
    patient = held["patientid"].str.strip()
    stats["from_pretraining_test_split_patients"] = int(patient.isin(test_patients).sum())
    stats["from_patients_without_notes"] = int((~patient.isin(test_patients)).sum())
    frame = pd.DataFrame(
        {
            "image": held["path"].map(str).to_numpy(),
            "patient_id": ("covid:" + patient).to_numpy(),
            "label": held["label"].to_numpy(),
            "source": "covid-chestxray",
        }
    )
    return frame, stats


def kermany_take(frame: pd.DataFrame, count: int, rng: np.random.Generator) -> pd.DataFrame:
    """``count`` images of whole patients (the last patient may be cut), patients in a seeded order."""
    patients = sorted(set(frame["patient_id"]))
    chosen, total = [], 0
    sizes = frame.groupby("patient_id").size()
    for patient in rng.permutation(patients):
        if total >= count:
            break
        chosen.append(patient)
        total += int(sizes[patient])
    taken = frame[frame["patient_id"].isin(chosen)]
    order = {p: i for i, p in enumerate(chosen)}
    return taken.sort_values("patient_id", key=lambda s: s.map(order), kind="stable").head(count)


def covidx_like(covid: pd.DataFrame, kermany: pd.DataFrame, seed: int) -> pd.DataFrame:
    covid = covid.copy()
    covid["split"] = assign_splits(covid["patient_id"].tolist(), 0.15, 0.35, seed)
    rng = np.random.default_rng(seed)
    parts = [covid]
    pools = {
        "train+val": kermany[kermany["split"].isin(["train", "val"])],  # Kermany's train folder
        "test": kermany[kermany["split"] == "test"],
    }
    for kermany_class, label in (("NORMAL", "normal"), ("PNEUMONIA", "pneumonia")):
        used: set[str] = set()
        for split in ("train", "val", "test"):
            pool = pools["test" if split == "test" else "train+val"]
            pool = pool[(pool["label"] == kermany_class) & ~pool["patient_id"].isin(used)]
            count = int(((covid["split"] == split) & (covid["label"] == "COVID-19")).sum())
            taken = kermany_take(pool, count, rng)
            used |= set(taken["patient_id"])
            folder = "test" if split == "test" else "train"
            parts.append(
                pd.DataFrame(
                    {
                        "image": taken["image"].to_numpy(),
                        "patient_id": (f"kermany-{folder}:" + taken["patient_id"]).to_numpy(),
                        "label": label,
                        "source": "kermany",
                        "split": split,
                    }
                )
            )
    frame = pd.concat(parts, ignore_index=True)
    frame["study_id"] = frame["image"].map(lambda p: Path(p).name)
    return frame[["image", "patient_id", "study_id", "split", "label", "source"]]


def kermany_tune(kermany: pd.DataFrame, seed: int) -> pd.DataFrame:
    val = kermany[kermany["split"] == "val"].assign(split="test")
    train = kermany[kermany["split"] == "train"]
    taken = kermany_take(train, 600, np.random.default_rng(seed)).copy()
    taken["split"] = assign_splits(taken["patient_id"].tolist(), 100, 0, seed)
    return pd.concat([taken, val], ignore_index=True)[["image", "patient_id", "study_id", "split", "label"]]


def counts(frame: pd.DataFrame, by: list[str]) -> dict:
    sizes = frame.groupby(by).size()
    return {" / ".join(map(str, k)) if isinstance(k, tuple) else str(k): int(v) for k, v in sizes.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=os.environ.get("CONVIRT_SHARED_DATA", "../shared/data"))
    parser.add_argument("--prepared", default="data/covid-real", help="`convirt prepare covid-chestxray` output")
    parser.add_argument("--out", default="runs/real-covid/tasks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    shared, out = Path(args.shared).resolve(), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kermany = load_labelled_dataset(f"imagefolder:{shared / 'kermany-pneumonia'}", seed=0).to_frame()

    tune = kermany_tune(kermany, args.seed)
    task = LabelledTask(name="kermany-tune", kind="binary", class_names=["NORMAL", "PNEUMONIA"])
    write_labelled_manifest(tune, out / "kermany-tune.csv", task, relative=False)

    covid, stats = held_out_covid(shared / "covid-chestxray", Path(args.prepared))
    three = covidx_like(covid, kermany, args.seed)
    task = LabelledTask(name="covidx-like", kind="multiclass", class_names=CLASSES, metric="accuracy")
    write_labelled_manifest(three, out / "covidx-like.csv", task, relative=False)

    summary = {
        "kermany_tune": counts(tune, ["split", "label"]),
        "covidx_like": counts(three, ["split", "label", "source"]),
        "covidx_like_patients": counts(three.drop_duplicates("patient_id"), ["split", "source"]),
        "covid_chestxray_held_out": stats,
    }
    (out / "tasks.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
