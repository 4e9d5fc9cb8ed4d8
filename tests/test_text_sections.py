"""Section extraction: the header variants of MIMIC-CXR and IU X-ray text and of flattened hospital exports."""

from __future__ import annotations

from convirt.text.sections import canonical_section, extract_sections, select_sections
from prepare_fixtures import MIMIC_REPORTS


def test_standard_mimic_report():
    parsed = extract_sections(MIMIC_REPORTS[("10000032", "50414267")])
    assert parsed.headers == ["FINAL REPORT", "EXAMINATION", "INDICATION", "TECHNIQUE", "COMPARISON", "FINDINGS",
                              "IMPRESSION"]  # fmt: skip
    assert parsed.get("examination") == "CHEST (PA AND LAT)"
    assert parsed.get("technique") == "Chest PA and lateral"
    assert parsed.get("indication") == "___F with new onset ascites  // eval for infection"
    assert parsed.get("comparison") == "None."
    assert parsed.get("findings").startswith("There is no focal consolidation, pleural effusion or pneumothorax.")
    assert parsed.get("findings").endswith("Chronic deformity of the posterior left sixth and seventh ribs are noted.")
    assert parsed.get("impression") == "No acute cardiopulmonary process."
    assert select_sections(parsed.sections) == [parsed.get("findings"), parsed.get("impression")]


def test_wet_read_before_final_report_and_numbered_impression():
    parsed = extract_sections(MIMIC_REPORTS[("10000032", "53189527")])
    assert parsed.get("wet_read").startswith("___ ___ 10:51 PM")  # "10:51" is not a header
    assert parsed.get("history") == "Shortness of breath."
    assert parsed.get("findings").startswith("Frontal and lateral views of the chest demonstrate a 2.5 cm")
    assert parsed.get("impression") == "1. Stable 2.5 cm right upper lobe nodule.\n 2. No pneumonia."
    assert "wet_read" not in select_sections.__defaults__[0]


def test_combined_and_alternative_headers():
    combined = extract_sections(MIMIC_REPORTS[("10000764", "57375967")])
    assert combined.get("indication") == "Evaluation of the patient with cough."
    assert combined.get("findings") == "Heart size is normal. Lungs are clear. No pleural\n effusion."
    # An untitled line under FINAL REPORT belongs to it, not to Findings.
    assert combined.get("final_report") == "PA AND LATERAL CHEST RADIOGRAPH"

    mixed_case = extract_sections(MIMIC_REPORTS[("10000980", "54577367")])
    assert mixed_case.get("findings") == "Mild pulmonary vascular congestion."
    assert mixed_case.get("impression") == "Mild interstitial edema, new since prior."  # CONCLUSION

    same_line = extract_sections(MIMIC_REPORTS[("10000935", "51178377")])
    assert same_line.get("impression") == "Normal."


def test_report_without_findings_or_impression():
    parsed = extract_sections(MIMIC_REPORTS[("10000935", "50578979")])
    assert not parsed.has("findings") and not parsed.has("impression")
    assert (
        parsed.get("history")
        == "Chest pain.\n\n Single portable view of the chest demonstrates no focal consolidation."
    )
    assert select_sections(parsed.sections) == []
    # "all" keeps every section: the untitled line under FINAL REPORT, the comparison, the history and the body
    # that follows it (with no header of its own it stays in the section above it).
    assert select_sections(parsed.sections, None) == [
        "CHEST RADIOGRAPH PERFORMED ON ___",
        "Prior exam from ___.",
        "Chest pain.\n\n Single portable view of the chest demonstrates no focal consolidation.",
    ]


def test_flattened_export_and_sub_headings():
    flat = extract_sections("History: cough. FINDINGS: No effusion. Heart normal. IMPRESSION: Normal chest.")
    assert flat.sections == {
        "history": "cough.",
        "findings": "No effusion. Heart normal.",
        "impression": "Normal chest.",
    }
    nested = extract_sections("FINDINGS:\nLUNGS: Clear.\nHEART: Normal size.\nIMPRESSION: No acute disease.")
    assert nested.get("findings") == "LUNGS: Clear.\nHEART: Normal size."
    assert nested.get("impression") == "No acute disease."
    # An unknown upper-case header outside Findings/Impression opens its own section.
    other = extract_sections("CLINICAL NOTE XYZ: old fracture.\nFINDINGS: No effusion.")
    assert other.sections == {"other:clinical_note_xyz": "old fracture.", "findings": "No effusion."}
    # Sentences inside a section that merely contain a colon are not headers.
    colon = extract_sections("FINDINGS: Tube tip at the level of: carina. Ratio 2:1.")
    assert colon.sections == {"findings": "Tube tip at the level of: carina. Ratio 2:1."}


def test_canonical_names_and_selection():
    assert canonical_section("Impressions") == "impression"
    assert canonical_section("FINDINGS AND IMPRESSION:") == "findings"
    assert canonical_section("reason for examination") == "indication"
    assert canonical_section("LUNGS") is None
    sections = {"indication": "Cough.", "findings": "Clear.", "impression": "", "comparison": "None."}
    assert select_sections(sections) == ["Clear."]
    assert select_sections(sections, ["findings", "indication"]) == ["Cough.", "Clear."]
    assert select_sections(sections, "all") == ["Cough.", "Clear.", "None."]
