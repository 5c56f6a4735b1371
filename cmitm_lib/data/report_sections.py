"""FINDINGS + IMPRESSION of a free-text radiology report (MIMIC-CXR; the csv reader's reports).

In this order of preference:

1. FINDINGS + IMPRESSION (headers at a line start: upper-case ``NAME:`` like MIMIC's own section
   parser, or ``findings:`` / ``impression:`` / ``conclusion:`` in any case, spaces allowed;
   ``CONCLUSION`` and ``FINDINGS AND IMPRESSION`` count as IMPRESSION, as in MIMIC's parser);
2. IMPRESSION alone; 3. FINDINGS alone;
4. a report with headers but neither section: the paragraphs after the first paragraph of the
   last section (MIMIC's ``last_paragraph``);
5. a report without any header: its whole body, "FINAL REPORT" title removed;
6. otherwise "" (the MIMIC reader skips the study: ``"no usable report text (studies)"``).
"""
from __future__ import annotations

import re

HEADER = re.compile(
    r"^[ \t]*(?P<name>[A-Z][A-Z ()/,&-]*?|(?i:findings?|impressions?|conclusions?))[ \t]*:", re.MULTILINE)
_TITLE = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.IGNORECASE | re.MULTILINE)


def squash(text: str) -> str:
    return " ".join(text.split())


def section_name(header: str) -> str:
    name = squash(header).lower()
    if "impression" in name or "conclusion" in name:
        return "impression"
    return "findings" if "finding" in name else name


def findings_impression(report: str) -> str:
    """FINDINGS + IMPRESSION of a free-text report, with the fallbacks listed in the module doc."""
    headers = list(HEADER.finditer(report))
    if not headers:
        return squash(_TITLE.sub("", report))
    sections: dict[str, str] = {}
    for header, following in zip(headers, headers[1:] + [None]):
        text = squash(report[header.end(): following.start() if following else len(report)])
        name = section_name(header.group("name"))
        sections[name] = squash(f"{sections.get(name, '')} {text}")
    text = squash(f"{sections.get('findings', '')} {sections.get('impression', '')}")
    if text:
        return text
    paragraphs = re.split(r"\n[ \t]*\n", report[headers[-1].end():].strip(), maxsplit=1)
    return squash(paragraphs[1]) if len(paragraphs) > 1 else ""


def report_text(raw: str) -> str:
    """FINDINGS + IMPRESSION when the report has either section (`findings_impression`), else the
    whole text, whitespace squashed (the csv reader's report column)."""
    names = {section_name(m.group("name")) for m in HEADER.finditer(raw)}
    return findings_impression(raw) if names & {"findings", "impression"} else squash(raw)
