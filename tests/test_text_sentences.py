"""Sentence splitting and tokenisation: hand-written cases, then every real IU X-ray report."""

from __future__ import annotations

import itertools
import re

import pytest

from convirt.prepare.sources.iu_xray import iter_report_xml, parse_report_xml
from convirt.text.sentences import split_sentences
from convirt.text.tokenize import count_tokens, has_content, tokenize
from prepare_fixtures import shared_folder


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # decimals and units: a unit before a period ends the sentence, a decimal point never does
        ("There is a 2.5 cm nodule. No effusion.", ["There is a 2.5 cm nodule.", "No effusion."]),
        ("Nodule measures 1.8 cm. Unchanged since 10.30.", ["Nodule measures 1.8 cm.", "Unchanged since 10.30."]),
        # abbreviations, titles, initials, "No." before a number, months before a day
        ("Dr. Smith was notified at 10:30 a.m. on the ward.", ["Dr. Smith was notified at 10:30 a.m. on the ward."]),
        ("Seen by Dr. J. Smith. Approx. 3 cm.", ["Seen by Dr. J. Smith.", "Approx. 3 cm."]),
        ("Compare with film No. 2 from Jan. 22 2020.", ["Compare with film No. 2 from Jan. 22 2020."]),
        (
            "Pneumonia vs. atelectasis. Effusion, e.g. on the left.",
            ["Pneumonia vs. atelectasis.", "Effusion, e.g. on the left."],
        ),
        # numbered lists inline, on lines, glued to the word, and after a header
        ("1. No pneumonia. 2. Stable cardiomegaly.", ["No pneumonia.", "Stable cardiomegaly."]),
        ("IMPRESSION:\n 1. Low lung volumes.\n 2. No edema.", ["IMPRESSION:", "Low lung volumes.", "No edema."]),
        ("1.Lucency in the clavicle. 2.No fracture.", ["Lucency in the clavicle.", "No fracture."]),
        ("- Right effusion\n- Left base atelectasis", ["Right effusion", "Left base atelectasis"]),
        # de-identification marks: start a sentence, never split on their own, drop when they are all there is
        ("No pneumothorax. XXXX are normal.", ["No pneumothorax.", "XXXX are normal."]),
        (
            "Findings discussed with Dr. ___ at ___. ___ was paged.",
            ["Findings discussed with Dr. ___ at ___.", "___ was paged."],
        ),
        ("Heart normal. ___. XXXX.", ["Heart normal."]),
        # hard-wrapped lines (MIMIC) join; blank lines separate
        (
            "There is no focal consolidation, pleural effusion or\n pneumothorax.  The heart\n is normal.",
            ["There is no focal consolidation, pleural effusion or pneumothorax.", "The heart is normal."],
        ),
        ("No effusion\n\nHeart normal", ["No effusion", "Heart normal"]),
        # a period glued to the next sentence; a stray second period; an HTML line break
        ("In the left apex.There are streaky opacities.", ["In the left apex.", "There are streaky opacities."]),
        ("No acute findings. .", ["No acute findings."]),
        ("concerning for<BR>metastatic disease.", ["concerning for metastatic disease."]),
        # question marks end sentences after a word; a detached "?" is encoding damage ("39.0 ? C")
        ("Is it pneumonia? Likely.", ["Is it pneumonia?", "Likely."]),
        ("Fever 39.0 ? C. Lymphocytes 4.3 ? 109 per liter.", ["Fever 39.0 ? C.", "Lymphocytes 4.3 ? 109 per liter."]),
        # lower-cased exports
        ("no effusion. heart size normal.", ["no effusion.", "heart size normal."]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences_cases(text, expected):
    assert split_sentences(text) == expected


def test_tokenizer_counts_like_corenlp():
    assert tokenize("Normal.") == ["Normal", "."]
    assert tokenize("A 2.5cm nodule, s/p CABG; x-ray at 10:30 a.m.") == [
        "A", "2.5cm", "nodule", ",", "s/p", "CABG", ";", "x-ray", "at", "10:30", "a.m.",
    ]  # fmt: skip
    assert tokenize("Dr. ___ saw XXXX XXXX.") == ["Dr", ".", "___", "saw", "XXXX", "XXXX", "."]
    assert count_tokens("No acute disease.") == 4
    assert count_tokens("Normal chest") == 2
    assert not has_content("___. XXXX --")
    assert not has_content("XXXX/XXXX.")
    assert has_content("x-XXXX")
    assert has_content("XXXX are normal")


def _iu_reports():
    archive_path = shared_folder("iu-xray-reports") / "NLMCXR_reports.tgz"
    reports = {}
    for name, data in iter_report_xml(archive_path):
        uid, sections, images = parse_report_xml(data, name)
        reports[uid] = (sections, images)
    return reports


@pytest.fixture(scope="module")
def iu_reports():
    return _iu_reports()


def test_all_iu_reports_parse_and_split(iu_reports):
    assert len(iu_reports) == 3955
    with_findings = sum(1 for s, _ in iu_reports.values() if s.get("findings"))
    with_impression = sum(1 for s, _ in iu_reports.values() if s.get("impression"))
    with_either = sum(1 for s, _ in iu_reports.values() if s.get("findings") or s.get("impression"))
    share = with_either / len(iu_reports)
    print(f"\nIU X-ray: {with_findings} with Findings, {with_impression} with Impression, "
          f"{with_either} ({share:.1%}) with Findings or Impression")  # fmt: skip
    # Counted by hand from the XML: 3425 have FINDINGS, 3921 IMPRESSION, 28 reports are empty.
    assert (with_findings, with_impression, with_either) == (3425, 3921, 3927)

    sentences = []
    for sections, _ in iu_reports.values():
        for name in ("findings", "impression"):
            sentences.extend(split_sentences(sections.get(name, "")))
    assert 22_000 < len(sentences) < 24_000
    # No sentence is broken at a decimal: no sentence ends in "<digit>." and the next begins with a digit.
    for text in (s.get(n, "") for s, _ in iu_reports.values() for n in ("findings", "impression")):
        pieces = split_sentences(text)
        for left, right in itertools.pairwise(pieces):
            assert not (re.search(r"\d\.$", left) and re.match(r"\d", right)), (left, right)
    # Every decimal in the source survives whole inside one sentence.
    joined = "\n".join(sentences)
    source_decimals = [d for s, _ in iu_reports.values() for n in ("findings", "impression")
                       for d in re.findall(r"\d+\.\d+", s.get(n, ""))]  # fmt: skip
    assert len(source_decimals) > 50
    assert all(d in joined for d in source_decimals)
    # No list marker or de-identification-only fragment survives as a sentence; re-splitting is a no-op.
    assert not [s for s in sentences if re.fullmatch(r"\(?\d{1,2}[.)]", s) or not has_content(s)]
    assert all(split_sentences(s) == [s] for s in sentences)


def test_hand_read_iu_reports(iu_reports):
    # CXR4: a period glued to the next sentence, and a numbered impression.
    sections, images = iu_reports["CXR4"]
    assert images == ["CXR4_IM-2050-1001", "CXR4_IM-2050-2001"]
    assert split_sentences(sections["findings"]) == [
        "There are diffuse bilateral interstitial and alveolar opacities consistent with chronic obstructive lung "
        "disease and bullous emphysema.",
        "There are irregular opacities in the left lung apex, that could represent a cavitary lesion in the left "
        "lung apex.",
        "There are streaky opacities in the right upper lobe, XXXX scarring.",
        "The cardiomediastinal silhouette is normal in size and contour.",
        "There is no pneumothorax or large pleural effusion.",
    ]
    assert split_sentences(sections["impression"]) == [
        "Bullous emphysema and interstitial fibrosis.",
        "Probably scarring in the left apex, although difficult to exclude a cavitary lesion.",
        "Opacities in the bilateral upper lobes could represent scarring, however the absence of comparison exam, "
        "recommend short interval followup radiograph or CT thorax to document resolution.",
    ]
    # CXR1326: a decimal measurement inside an impression with no Findings section.
    sections, _ = iu_reports["CXR1326"]
    assert "findings" not in sections
    pieces = split_sentences(sections["impression"])
    assert len(pieces) == 8
    assert pieces[3] == "Right-sided pneumothorax noted measuring approximately 1.8 cm from the the right apex."
    # CXR1423: "normal.Calcified" glued.
    assert split_sentences(iu_reports["CXR1423"][0]["findings"])[1:3] == [
        "Vascularity normal.",
        "Calcified breast implants obscure some detail.",
    ]
    # CXR123: de-identified time and names; "a.m." ends the sentence; the closing "XXXX/XXXX." holds nothing.
    assert split_sentences(iu_reports["CXR123"][0]["impression"])[-2:] == [
        "Findings and recommendations were discussed XXXX.",
        "XXXX in the XXXX department at XXXX a.m.",
    ]
    # CXR1: "Normal chest x-XXXX." is one sentence of 4 tokens.
    assert split_sentences(iu_reports["CXR1"][0]["impression"]) == ["Normal chest x-XXXX."]
    assert count_tokens("Normal chest x-XXXX.") == 4
