"""Synthetic reports agree with the labels (negations included) and parse like real reports; dataset files."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from convirt.synthetic.dataset import MULTIPLE, NO_FINDING, generate_dataset, render_study, sample_study
from convirt.synthetic.render import CATEGORIES, FINDINGS
from convirt.text.sections import extract_sections
from convirt.text.sentences import split_sentences

# An independent rule-based labeller (CheXpert-labeller style: mention, then negation), written for this test.
MENTIONS = {
    "Atelectasis": r"atelectasis",
    "Cardiomegaly": r"cardiomegaly|heart is \w* ?enlarged|cardiac silhouette is enlarged|enlarged cardiac|heart size|"
    r"cardiac silhouette is within normal",
    "Edema": r"edema",
    "Fracture": r"fracture|osseous|cortical discontinuity",
    "Pleural Effusion": r"effusion|costophrenic angle|pleural fluid",
    "Pneumonia": r"pneumonia|consolidation|airspace opacity|focal opacity",
    "Pneumothorax": r"pneumothorax|visceral pleural line",
}
NEGATION = re.compile(r"\b(no|without|not)\b|within normal limits|is normal|normal heart|are sharp|are intact")


def read_labels(text: str) -> tuple[set[str], set[str]]:
    """(positively mentioned categories, negated categories) of a report."""
    positive, negative = set(), set()
    for sentence in split_sentences(text):
        lower = sentence.lower()
        for category, pattern in MENTIONS.items():
            match = re.search(pattern, lower)
            if not match:
                continue
            before = lower[: match.start()]
            negated = bool(NEGATION.search(before)) or bool(
                re.search(r"is normal|normal heart|within normal limits|are sharp|are intact", lower)
            )
            if " without " in lower and lower.index(" without ") < match.start():
                negated = True
            (negative if negated else positive).add(category)
    return positive, negative


STUDIES = [sample_study(seed, i) for seed in (0, 1) for i in range(400)]


def test_every_report_sentence_agrees_with_the_labels():
    for study in STUDIES:
        present = {c for c in FINDINGS if study.labels[c]}
        positive, negative = read_labels(study.report)
        assert positive == present, (study.labels, study.report)
        assert not negative & present, (study.labels, study.report)


def test_absent_findings_are_negated_and_normal_studies_say_so():
    negated_counts = Counter()
    for study in STUDIES:
        _, negative = read_labels(study.report)
        assert negative, study.report  # every report negates something
        negated_counts.update(negative)
        sections = extract_sections(study.report)
        if study.labels[NO_FINDING]:
            assert re.search(r"no acute|normal chest", sections.get("impression").lower())
    assert set(negated_counts) == set(FINDINGS)  # each category is negated somewhere ("No pleural effusion ...")
    assert any("No pleural effusion or pneumothorax." in s.report for s in STUDIES)


def test_reports_have_the_four_sections_and_varied_wording():
    first_sentences = Counter()
    for study in STUDIES:
        for header in ("INDICATION:", "COMPARISON:", "FINDINGS:", "IMPRESSION:"):
            assert header in study.report
        sections = extract_sections(study.report)
        assert sections.get("findings") and sections.get("impression")
        present = [f for f in study.findings]
        if len(present) == 1:
            first_sentences[(present[0].category, split_sentences(sections.get("impression"))[0].split()[0])] += 1
    findings_sentences = [
        sentence for study in STUDIES for sentence in split_sentences(extract_sections(study.report).get("findings"))
    ]
    for category in FINDINGS:  # several phrasings per finding
        phrasings = {
            s for s in findings_sentences if re.search(MENTIONS[category], s.lower()) and not NEGATION.search(s.lower())
        }
        assert len(phrasings) >= 3, (category, phrasings)
    # distractors: devices and comparison sentences, not tied to the labels
    text = " ".join(s.report for s in STUDIES)
    assert "EKG leads overlie the chest." in text and "compared" in text.lower()


def test_label_mix_severity_and_two_finding_studies():
    counts = Counter(s.category for s in STUDIES)
    assert counts[NO_FINDING] > 0.1 * len(STUDIES)
    assert counts[MULTIPLE] > 0.05 * len(STUDIES)
    for category in FINDINGS:
        assert counts[category] > 0.04 * len(STUDIES)
    sides = Counter(f.side for s in STUDIES for f in s.findings)
    assert sides["right"] > 30 and sides["left"] > 30
    severities = [f.severity for s in STUDIES for f in s.findings]
    assert min(severities) < 0.1 and max(severities) > 0.9


def test_sample_study_is_reproducible_and_prefix_stable():
    a, b = sample_study(5, 17), sample_study(5, 17)
    assert a.report == b.report and a.labels == b.labels
    assert np.array_equal(render_study(a), render_study(b))
    assert sample_study(6, 17).report != a.report or sample_study(6, 17).labels != a.labels


def test_generate_dataset_writes_the_csv_prepare_layout_and_a_labelled_manifest(tmp_path):
    from convirt.data.labelled import read_labelled_manifest
    from convirt.prepare import prepare

    summary = generate_dataset(tmp_path / "syn", size=40, seed=3, image_size=96, workers=1)
    pairs = pd.read_csv(summary.pairs)
    assert list(pairs.columns) == ["image", "text", "patient_id", "study_id"] and len(pairs) == 40
    assert all((tmp_path / "syn" / p).is_file() for p in pairs["image"])
    manifest = read_labelled_manifest(summary.labels)
    assert manifest.task.kind == "multilabel" and manifest.task.class_names == list(CATEGORIES)
    assert manifest.targets.shape == (40, 8)
    assert np.array_equal(manifest.targets[:, -1] == 1, manifest.targets[:, :-1].sum(1) == 0)  # No Finding
    labels = pd.read_csv(summary.labels)
    for index, text in enumerate(pairs["text"]):
        positive, _ = read_labels(text)
        assert positive == {c for c in FINDINGS if labels.loc[index, c] == 1}
    prepare("csv", tmp_path / "syn", tmp_path / "prepared", table="pairs.csv", image_size=96,
                     workers=1, progress=False, log=lambda _: None)  # fmt: skip
    prepared = pd.read_csv(tmp_path / "prepared" / "manifest.csv")
    assert len(prepared) == 40
    assert not prepared["text"].str.contains("INDICATION|COMPARISON").any()  # only Findings + Impression kept


@pytest.mark.parametrize("workers", [1, 2])
def test_generation_does_not_depend_on_the_number_of_workers(tmp_path, workers):
    summary = generate_dataset(tmp_path / f"w{workers}", size=24, seed=9, image_size=64, workers=workers)
    reference = [sample_study(9, i).report for i in range(24)]
    assert pd.read_csv(summary.pairs)["text"].tolist() == reference
