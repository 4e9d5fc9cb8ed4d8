"""How far a source-only shortcut goes on the COVIDx-like task: a classifier that sees only image statistics.

    python docs/results/real-covid/shortcut.py runs/real-covid/tasks/covidx-like.csv --image-size 128 \
        --out docs/results/real-covid/shortcut.json

Features, computed on exactly the input every encoder gets (``ClassificationImages``: grey -> zero-pad to square
-> resize; before ImageNet normalisation): mean, standard deviation, a 16-bin intensity histogram and the share of
exactly-black pixels (zero padding shows a non-square source image). No pixel layout, no learned features.
Classifier: multinomial logistic regression on z-scored features, trained on the same label-fraction subsets as
`convirt evaluate classify` (``label_fraction_subset``, same seeds); test accuracy, overall and per source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from convirt.data.labelled import read_labelled_manifest
from convirt.evaluation.classification.data import ClassificationImages
from convirt.evaluation.classification.runner import scoring_groups
from convirt.evaluation.classification.subsets import label_fraction_subset

MEAN, STD = 0.485, 0.229  # undo the red channel of ToModelInput's ImageNet normalisation (grey images)


def statistics(images: list[str], image_size: int) -> np.ndarray:
    data = ClassificationImages(images, image_size)
    rows = []
    for i in range(len(data)):
        x = data[i][0][0].numpy() * STD + MEAN  # back to [0, 1]
        hist = np.histogram(x, bins=16, range=(0.0, 1.0))[0] / x.size
        rows.append([x.mean(), x.std(), (x <= 1e-6).mean(), *hist])
    return np.asarray(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("manifest")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--fractions", default="0.1,1")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    manifest = read_labelled_manifest(args.manifest)
    table = pd.read_csv(args.manifest, dtype=str, keep_default_na=False)
    train, test = manifest.split("train"), manifest.split("test")
    source = table.loc[table["split"] == "test", "source"].to_numpy()
    x_train, x_test = statistics(list(train.images), args.image_size), statistics(list(test.images), args.image_size)
    covid = manifest.task.class_names.index("COVID-19")
    results: dict = {"features": "mean, std, share of black pixels, 16-bin histogram", "runs": []}
    for fraction in (float(f) for f in args.fractions.split(",")):
        for seed in range(args.seeds):
            rows = label_fraction_subset(train.task, train.targets, fraction, seed, scoring_groups(train))
            scaler = StandardScaler().fit(x_train[rows])
            model = LogisticRegression(max_iter=2000, C=1.0, random_state=seed)
            model.fit(scaler.transform(x_train[rows]), train.targets[rows])
            predicted = model.predict(scaler.transform(x_test))
            correct = predicted == test.targets
            adult_other = (source == "covid-chestxray") & (test.targets != covid)
            results["runs"].append(
                {
                    "fraction": fraction,
                    "seed": seed,
                    "n_train": len(rows),
                    "accuracy": float(correct.mean()),
                    "accuracy_kermany": float(correct[source == "kermany"].mean()),
                    "accuracy_covid_chestxray_covid19": float(correct[(source != "kermany") & ~adult_other].mean()),
                    "covid_chestxray_non_covid_called_covid19": f"{int((predicted[adult_other] == covid).sum())}"
                    f"/{int(adult_other.sum())}",
                }
            )
    frame = pd.DataFrame(results["runs"])
    results["summary"] = {
        f"{f:g}": {
            column: [round(100 * group[column].mean(), 1), round(100 * group[column].std(ddof=1), 1)]
            for column in ("accuracy", "accuracy_kermany", "accuracy_covid_chestxray_covid19")
        }
        for f, group in frame.groupby("fraction")
    }
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["summary"], indent=2))
    print(frame.to_string(index=False))


if __name__ == "__main__":
    main()
