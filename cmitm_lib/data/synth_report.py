"""SynthCXR report text: a radiology report (FINDINGS + IMPRESSION) written from a case's parameters.

Stated findings get a positive sentence, hedged ones a hedged sentence, and normal sentences negate
only findings that are neither present nor hedged; `compose_report` also returns the report labels
(1 stated, 0 negated / not mentioned, -1 hedged).
"""
from __future__ import annotations

import numpy as np

from .synth_params import FINDINGS

MAX_REPORT_WORDS = 40

# Each template is a sentence with {placeholders} filled from the finding's parameters. The first
# positive template of each finding is the shortest; it is used when a report runs long.
# Positive sentences never contain negation words (no, not, without, normal, clear, sharp) or hedge
# words (possible, may, cannot, questionable), so a report can be checked sentence by sentence.

POSITIVE = {
    "cardiomegaly": (
        "{Sev} cardiomegaly.",
        "The heart is {sevly} enlarged.",
        "The cardiac silhouette is {sevly} enlarged.",
        "{Sev} enlargement of the cardiac silhouette.",
    ),
    "effusion": (
        "{Size} {side} pleural {effusion}.",
        "There {is} {a}{size} {side} pleural {effusion}.",
        "{Side} pleural {effusion}, {size} in size.",
        "Blunting of the {side} costophrenic {angle} from {a}{size} {effusion}.",
    ),
    "consolidation": (
        "{Lobe} consolidation.",
        "Patchy consolidation in the {lobe}.",
        "Airspace opacity in the {lobe} consistent with consolidation.",
        "Focal {extent} airspace consolidation within the {lobe}.",
    ),
    "pneumothorax": (
        "{Size} {side} pneumothorax.",
        "There is a {size} {side} apical pneumothorax.",
        "A {size} {side} pneumothorax is present with a visible pleural line.",
        "{Side} pneumothorax, {size}.",
    ),
    "nodule": (
        "{mm} mm {side} {zone} lung nodule.",
        "Nodule in the {side} {zone} lung, {mm} mm.",
        "Rounded {mm} mm nodular opacity in the {side} {zone} lung zone.",
        "Solitary {side} {zone} lung nodule measuring {mm} mm.",
    ),
    "edema": (
        "{Sev} pulmonary edema.",
        "{Sev} perihilar haziness consistent with pulmonary edema.",
        "Increased interstitial markings compatible with {sev} edema.",
        "Bilateral perihilar opacities in keeping with {sev} interstitial edema.",
    ),
    "atelectasis": (
        "{Side} basilar atelectasis.",
        "Plate-like atelectasis at the {side} lung base.",
        "Linear opacity at the {side} base consistent with subsegmental atelectasis.",
        "Mild {side} basal atelectasis with slight volume loss.",
    ),
}

HEDGED = {
    "cardiomegaly": (
        "Possible {sev} cardiomegaly.",
        "The heart may be {sevly} enlarged.",
        "Borderline heart size, cardiomegaly cannot be excluded.",
    ),
    "effusion": (
        "Possible {size} {side} pleural {effusion}.",
        "Blunting of the {side} costophrenic {angle} may represent {a}small {effusion}.",
        "Small {side} pleural {effusion} cannot be excluded.",
    ),
    "consolidation": (
        "Possible {lobe} consolidation.",
        "Hazy opacity in the {lobe} may represent early pneumonia.",
        "Subtle {lobe} opacity, cannot exclude pneumonia.",
    ),
    "pneumothorax": (
        "Possible small {side} apical pneumothorax.",
        "Subtle {side} apical lucency, cannot exclude pneumothorax.",
        "Questionable {side} pneumothorax.",
    ),
    "nodule": (
        "Possible {mm} mm nodule in the {side} {zone} lung.",
        "Rounded density in the {side} {zone} lung may represent a nodule.",
        "Questionable {side} {zone} lung nodule.",
    ),
    "edema": (
        "Possible mild pulmonary edema.",
        "Perihilar haziness may represent mild edema.",
        "Mild interstitial prominence, cannot exclude early edema.",
    ),
    "atelectasis": (
        "Linear {side} basilar opacity, possibly atelectasis.",
        "{Side} basilar opacity may represent atelectasis.",
        "Questionable {side} basilar atelectasis.",
    ),
}

IMPRESSION_POSITIVE = {
    "cardiomegaly": ("{Sev} cardiomegaly.", "Cardiomegaly."),
    "effusion": ("{Size} {side} pleural {effusion}.", "{Side} pleural {effusion}."),
    "consolidation": ("{Lobe} consolidation.", "{Lobe} pneumonia."),
    "pneumothorax": ("{Size} {side} pneumothorax.", "{Side} pneumothorax."),
    "nodule": ("{Side} {zone} lung nodule.", "{mm} mm {side} lung nodule."),
    "edema": ("{Sev} pulmonary edema.", "Pulmonary edema."),
    "atelectasis": ("{Side} basilar atelectasis.", "Atelectasis at the {side} base."),
}

IMPRESSION_HEDGED = ("Possible {short}.", "Cannot exclude {short}.", "Questionable {short}.")
SHORT = {
    "cardiomegaly": "cardiomegaly",
    "effusion": "{side} pleural {effusion}",
    "consolidation": "{lobe} pneumonia",
    "pneumothorax": "{side} pneumothorax",
    "nodule": "{side} lung nodule",
    "edema": "pulmonary edema",
    "atelectasis": "{side} basilar atelectasis",
}

# (sentence, topics it covers). Topics that are findings are negated by the sentence, so it is
# used only when they are all absent and unhedged; a report never repeats a topic.
NORMAL_SENTENCES = (
    ("Heart size is normal.", ("cardiomegaly",)),
    ("The cardiac silhouette is normal in size.", ("cardiomegaly",)),
    ("Cardiomediastinal silhouette is within normal limits.", ("cardiomegaly", "mediastinum")),
    ("No pleural effusion or pneumothorax.", ("effusion", "pneumothorax")),
    ("No pleural effusion.", ("effusion",)),
    ("The costophrenic angles are sharp.", ("effusion",)),
    ("No pneumothorax.", ("pneumothorax",)),
    ("No focal consolidation.", ("consolidation",)),
    ("No focal airspace disease.", ("consolidation",)),
    ("No pulmonary nodules.", ("nodule",)),
    ("No pulmonary edema.", ("edema",)),
    ("Pulmonary vasculature is normal.", ("edema",)),
    ("No atelectasis.", ("atelectasis",)),
    ("The lungs are clear.", ("consolidation", "edema", "nodule", "atelectasis", "pneumothorax")),
    ("Lungs are clear without focal opacity.", ("consolidation", "edema", "nodule", "atelectasis")),
    ("Mediastinal contours are unremarkable.", ("mediastinum",)),
    ("The mediastinum is normal.", ("mediastinum",)),
    ("Hilar contours are normal.", ("hila",)),
    ("Trachea is midline.", ("trachea",)),
    ("Osseous structures are intact.", ("bones",)),
    ("No acute osseous abnormality.", ("bones",)),
)
IMPRESSION_NORMAL = (
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "No acute disease.",
)


def _fill(template: str, params: dict) -> str:
    """Fill {placeholders} from finding parameters; capitalised keys give capitalised words."""
    side = params.get("side", "")
    plural = side == "bilateral"
    words = {
        "sev": params.get("severity", ""),
        "sevly": {"mild": "mildly", "moderate": "moderately", "marked": "markedly"}.get(params.get("severity"), ""),
        "size": params.get("size", ""),
        "side": side,
        "lobe": params.get("lobe", ""),
        "extent": params.get("extent", ""),
        "zone": params.get("zone", ""),
        "mm": str(params.get("size_mm", "")),
        "effusion": "effusions" if plural else "effusion",
        "angle": "angles" if plural else "angle",
        "is": "are" if plural else "is",
        "a": "" if plural else "a ",
    }
    words.update({k.capitalize(): w.capitalize() for k, w in words.items()})
    return template.format(**words)


def _mention_sentences(rng, name, params, hedged, compact):
    """(findings sentence, impression sentence) for one stated or hedged finding."""
    pick = (lambda options: options[0]) if compact else (lambda options: options[rng.integers(len(options))])
    if hedged:
        impression = pick(IMPRESSION_HEDGED).format(short=_fill(SHORT[name], params))
        return _fill(pick(HEDGED[name]), params), impression[0].upper() + impression[1:]
    return _fill(pick(POSITIVE[name]), params), _fill(pick(IMPRESSION_POSITIVE[name]), params)


def _normal_sentences(rng, quiet: set[str], count: int) -> list[str]:
    """Up to `count` normal sentences, negating only quiet (absent, unhedged) findings."""
    covered, chosen = set(), []
    for i in rng.permutation(len(NORMAL_SENTENCES)):
        sentence, topics = NORMAL_SENTENCES[i]
        if len(chosen) < count and covered.isdisjoint(topics) and quiet.issuperset(set(topics) & set(FINDINGS)):
            covered.update(topics)
            chosen.append(sentence)
    return chosen


def _word_count(sentences: list[str]) -> int:
    return sum(len(s.split()) for s in sentences) + 2  # + the two section headers


def compose_report(rng: np.random.Generator, params: dict) -> tuple[str, np.ndarray]:
    """Report text and report labels (1 stated, 0 negated / unmentioned, -1 hedged).

    Every stated or hedged finding gets a FINDINGS sentence and an IMPRESSION sentence; one to four
    normal sentences fill the rest. Over MAX_REPORT_WORDS, normal sentences are dropped and then
    compact templates used (a study with many findings can still run a few words over).
    """
    labels, hedged = params["labels"], params["hedged"]
    report_labels = np.where(hedged, -1.0, labels).astype(np.float32)
    mentioned = [(name, bool(hedged[i])) for i, name in enumerate(FINDINGS) if report_labels[i] != 0]
    quiet = {name for i, name in enumerate(FINDINGS) if report_labels[i] == 0}
    details = {**params["findings"], **params["mentions"]}
    pairs = [_mention_sentences(rng, name, details[name], h, False) for name, h in mentioned]
    normal = _normal_sentences(rng, quiet, int(rng.integers(1, 5)))
    impression = [i for _, i in pairs] or [IMPRESSION_NORMAL[rng.integers(len(IMPRESSION_NORMAL))]]
    while normal and _word_count([f for f, _ in pairs] + normal + impression) > MAX_REPORT_WORDS:
        normal.pop()
    if _word_count([f for f, _ in pairs] + impression) > MAX_REPORT_WORDS:
        pairs = [_mention_sentences(rng, name, details[name], h, True) for name, h in mentioned]
        impression = [i for _, i in pairs]
    findings = [f for f, _ in pairs] + normal
    findings = [findings[i] for i in rng.permutation(len(findings))]
    return "FINDINGS: " + " ".join(findings) + " IMPRESSION: " + " ".join(impression), report_labels
