"""Text queries per synthetic category: what text-image retrieval and zero-shot classification ask for.

Five sentences per category, in the style of the official CheXpert 8x200 text queries. They describe the findings in
report language but are not copied from one report; some wordings ("bibasilar", "rib fractures") never occur in the
generated reports. :func:`convirt.synthetic.dataset.generate_dataset` writes them as ``text_queries.csv``
(``label,text``: a prompt file for ``convirt evaluate retrieval --prompts`` and ``evaluate zeroshot``).
"""

from __future__ import annotations

import io

import pandas as pd

TEXT_QUERIES: dict[str, list[str]] = {
    "Atelectasis": [
        "Plate-like atelectasis at the lung base.",
        "Subsegmental atelectasis at the right base.",
        "Linear atelectasis in the left lower lung.",
        "Basilar atelectasis with volume loss.",
        "Discoid atelectasis is present.",
    ],
    "Cardiomegaly": [
        "The heart is enlarged.",
        "Cardiomegaly is present.",
        "Moderate cardiomegaly.",
        "The cardiac silhouette is enlarged.",
        "Marked enlargement of the heart.",
    ],
    "Edema": [
        "Pulmonary edema.",
        "Moderate pulmonary edema is present.",
        "Bilateral perihilar haziness consistent with edema.",
        "Interstitial edema in both lungs.",
        "Pulmonary vascular congestion and edema.",
    ],
    "Fracture": [
        "Acute rib fracture.",
        "There is a fracture of the left rib.",
        "Displaced right rib fracture.",
        "Cortical discontinuity of a rib consistent with fracture.",
        "Rib fractures are present.",
    ],
    "Pleural Effusion": [
        "Pleural effusion.",
        "There is a moderate right pleural effusion.",
        "Large left pleural effusion.",
        "Blunting of the costophrenic angle consistent with effusion.",
        "Small pleural effusion is present.",
    ],
    "Pneumonia": [
        "Focal consolidation concerning for pneumonia.",
        "Right lower lobe pneumonia.",
        "Airspace opacity in the left lung consistent with pneumonia.",
        "Consolidation in the upper lobe.",
        "Findings consistent with pneumonia.",
    ],
    "Pneumothorax": [
        "Pneumothorax.",
        "There is a small right apical pneumothorax.",
        "Large left pneumothorax.",
        "A visceral pleural line with absent lung markings beyond it.",
        "Pneumothorax is present.",
    ],
    "No Finding": [
        "No acute cardiopulmonary process.",
        "Normal chest radiograph.",
        "The lungs are clear.",
        "No acute cardiopulmonary abnormality.",
        "Heart size is normal and the lungs are clear.",
    ],
}


def text_queries_csv() -> str:
    """The queries as a prompt file (``label,text``, one sentence per row, categories in order)."""
    rows = [(label, text) for label, texts in TEXT_QUERIES.items() for text in texts]
    buffer = io.StringIO()
    pd.DataFrame(rows, columns=["label", "text"]).to_csv(buffer, index=False)
    return buffer.getvalue()
