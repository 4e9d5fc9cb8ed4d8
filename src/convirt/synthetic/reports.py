"""Radiology reports for synthetic studies: INDICATION / COMPARISON / FINDINGS / IMPRESSION.

Every finding has several phrasings in Findings and in Impression (with its side, size/severity, zone or rib), the
absent findings are negated in a random subset of the usual normal statements ("No pleural effusion or
pneumothorax.", "Heart size is normal."), and neutral sentences (devices that are drawn in the image, technique,
comparison) are mixed in, so a sentence sampled from the report is often not about the finding at all, as in real
reports. Nothing in the text contradicts the labels: a category is mentioned positively iff it is present, and
negated only when absent.
"""

from __future__ import annotations

import numpy as np

from convirt.synthetic.render import Devices, Finding

SIZE_WORDS = ("small", "moderate", "large")
SEVERITY_WORDS = ("mild", "moderate", "severe")
CARDIO_WORDS = ("mild", "moderate", "marked")
ORDINALS = {4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth"}

INDICATIONS = (
    "Cough.",
    "Shortness of breath.",
    "Chest pain.",
    "Fever.",
    "Preoperative evaluation.",
    "Follow-up.",
    "Dyspnea on exertion.",
    "Evaluate for acute cardiopulmonary process.",
    "Status post fall.",
    "Hypoxia.",
)
COMPARISONS = ("None.", "None available.", "Chest radiograph from {n} days prior.", "Prior study from {n} months ago.")
TECHNIQUE = ("PA view of the chest.", "Single frontal view of the chest.", "Frontal chest radiograph.")
COMPARISON_SENTENCES = (
    "Comparison is made to the prior radiograph.",
    "Compared to the prior study, the lung volumes are similar.",
    "The study is compared with the prior examination.",
)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _word(words: tuple[str, ...], severity: float) -> str:
    return words[min(int(severity * len(words)), len(words) - 1)]


def _lobe(finding: Finding) -> str:
    if finding.zone == "middle":
        return "middle lobe" if finding.side == "right" else "lingula"
    return f"{finding.zone} lobe"


def finding_sentences(
    finding: Finding, rng: np.random.Generator, ctr: float | None = None, present: frozenset[str] = frozenset()
) -> tuple[str, str]:
    """(a Findings sentence, an Impression phrase) for one present finding (``present``: all present categories)."""
    side, Side = finding.side, finding.side.capitalize()
    cat = finding.category
    if cat == "Cardiomegaly":
        w = _word(CARDIO_WORDS, finding.severity)
        findings = [
            f"The heart is {w}ly enlarged.",
            f"There is {w} cardiomegaly.",
            "The cardiac silhouette is enlarged.",
            f"The heart is enlarged, with a cardiothoracic ratio of about {ctr:.2f}." if ctr else "Cardiomegaly.",
        ]
        impressions = ["Cardiomegaly.", f"{w.capitalize()} cardiomegaly.", "Enlarged cardiac silhouette."]
    elif cat == "Pleural Effusion":
        w = _word(SIZE_WORDS, finding.severity)
        findings = [
            f"There is a {w} {side} pleural effusion.",
            f"Blunting of the {side} costophrenic angle with a meniscus, consistent with a {w} pleural effusion.",
            f"{Side} pleural effusion is {w} in size.",
        ]
        if "Pneumothorax" not in present:
            findings.append(f"A {w} {side} pleural effusion is present without pneumothorax.")
        impressions = [f"{w.capitalize()} {side} pleural effusion.", f"{Side} pleural effusion."]
    elif cat == "Pneumothorax":
        w = _word(SIZE_WORDS, finding.severity)
        cm = 1.0 + 3.0 * finding.severity
        findings = [
            f"There is a {w} {side} apical pneumothorax.",
            f"A visceral pleural line is seen in the {side} hemithorax with absent lung markings beyond it, "
            "consistent with pneumothorax.",
            f"{Side} pneumothorax measuring approximately {cm:.1f} cm.",
            f"A {w} {side} pneumothorax is present.",
        ]
        impressions = [f"{Side} pneumothorax.", f"{w.capitalize()} {side} pneumothorax."]
    elif cat == "Pneumonia":
        lobe = _lobe(finding)
        extra = " with air bronchograms" if finding.bronchograms else ""
        findings = [
            f"There is focal consolidation in the {side} {lobe}{extra}.",
            f"Airspace opacity in the {side} {finding.zone} lung zone{extra}, concerning for pneumonia.",
            f"{Side} {lobe} consolidation{extra}.",
            f"A patchy focal opacity is seen in the {side} {lobe}, likely pneumonia.",
        ]
        impressions = [f"{Side} {lobe} pneumonia.", "Focal consolidation concerning for pneumonia.",
                       f"Findings consistent with {side} {lobe} pneumonia."]  # fmt: skip
    elif cat == "Edema":
        w = _word(SEVERITY_WORDS, finding.severity)
        findings = [
            f"There is {w} pulmonary edema.",
            f"Bilateral perihilar haziness with indistinct vascular markings, consistent with {w} pulmonary edema.",
            "Interstitial edema is present in both lungs.",
            f"{w.capitalize()} pulmonary vascular congestion and edema.",
        ]
        impressions = [f"{w.capitalize()} pulmonary edema.", "Pulmonary edema."]
    elif cat == "Atelectasis":
        findings = [
            f"Plate-like atelectasis at the {side} lung base.",
            f"Linear opacity at the {side} base, consistent with subsegmental atelectasis.",
            f"{Side} basilar atelectasis with volume loss and elevation of the {side} hemidiaphragm.",
            f"There is discoid atelectasis in the {side} lower lung.",
        ]
        impressions = [f"{Side} basilar atelectasis.", f"Subsegmental atelectasis at the {side} base."]
    elif cat == "Fracture":
        rib = ORDINALS.get(finding.rib, f"{finding.rib}th")
        findings = [
            f"There is an acute fracture of the {side} lateral {rib} rib.",
            f"Cortical discontinuity of the {side} {rib} rib, consistent with fracture.",
            f"A displaced {side} {rib} rib fracture is noted.",
        ]
        impressions = [f"{Side} {rib} rib fracture.", f"Acute {side} rib fracture."]
    else:
        raise ValueError(f"unknown finding {cat!r}")
    return _pick(rng, findings), _pick(rng, impressions)


# Normal statements: (categories they negate, sentences). Used only when every named category is absent.
NEGATIONS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("Pleural Effusion", "Pneumothorax"), ("No pleural effusion or pneumothorax.",
                                            "There is no effusion or pneumothorax.")),
    (("Pleural Effusion",), ("No pleural effusion.", "The costophrenic angles are sharp.")),
    (("Pneumothorax",), ("No pneumothorax.", "There is no pneumothorax.")),
    (("Pneumonia",), ("There is no focal consolidation.",)),
    (("Pneumonia", "Edema", "Atelectasis", "Pneumothorax"), ("The lungs are clear without focal consolidation.",)),
    (("Pneumonia", "Atelectasis"), ("No focal consolidation or atelectasis.",)),
    (("Cardiomegaly",), ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                         "Normal heart size.")),
    (("Edema",), ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema.")),
    (("Fracture",), ("No acute osseous abnormality.", "No displaced rib fracture.",
                     "The osseous structures are intact.")),
)  # fmt: skip
NO_FINDING_IMPRESSIONS = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute intrathoracic process.",
)


def device_sentences(devices: Devices | None) -> list[str]:
    out = []
    if devices is None:
        return out
    if devices.central_line:
        side = devices.central_line
        out.append(f"{side.capitalize()} internal jugular central venous catheter terminates in the SVC.")
    if devices.ecg_leads:
        out.append("EKG leads overlie the chest.")
    return out


def write_report(
    findings: list[Finding],
    devices: Devices | None,
    rng: np.random.Generator,
    ctr: float | None = None,
) -> str:
    """The report of one study."""
    present = {f.category for f in findings}
    body: list[str] = []
    impression: list[str] = []
    for finding in findings:
        sentence, phrase = finding_sentences(
            finding, rng, ctr if finding.category == "Cardiomegaly" else None, frozenset(present)
        )
        body.append(sentence)
        impression.append(phrase)
    # negated statements for (some of) the absent findings
    usable = [(cats, sents) for cats, sents in NEGATIONS if not present.intersection(cats)]
    order = rng.permutation(len(usable))
    covered: set[str] = set()
    n_negations = int(rng.integers(1, 4))
    for i in order:
        cats, sents = usable[int(i)]
        if covered.intersection(cats):
            continue
        body.append(_pick(rng, sents))
        covered.update(cats)
        if len(covered) >= n_negations + 1:
            break
    body.extend(device_sentences(devices))
    if rng.random() < 0.4:
        body.append(_pick(rng, COMPARISON_SENTENCES))
    if rng.random() < 0.3:
        body.insert(0, _pick(rng, TECHNIQUE))
    # the finding sentences first (as radiologists write the abnormality first) or shuffled
    if rng.random() < 0.5:
        head = body[:1] if body and body[0] in TECHNIQUE else []
        rest = body[len(head) :]
        body = head + [rest[int(i)] for i in rng.permutation(len(rest))]
    if not findings:
        impression = [_pick(rng, NO_FINDING_IMPRESSIONS)]
    comparison = _pick(rng, COMPARISONS).format(n=int(rng.integers(2, 30)))
    if len(impression) > 1:
        impression_text = "\n".join(f"{i + 1}. {p}" for i, p in enumerate(impression))
    else:
        impression_text = impression[0]
    return (
        f"INDICATION: {_pick(rng, INDICATIONS)}\n\n"
        f"COMPARISON: {comparison}\n\n"
        f"FINDINGS: {' '.join(body)}\n\n"
        f"IMPRESSION:\n{impression_text}\n"
    )
