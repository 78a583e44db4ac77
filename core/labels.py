"""Worker labels (`HUB_WORKER_LABELS`): the rule a label follows, shared by the settings (a
worker with a malformed label does not start) and placement (sequences/placement.py), which
checks the labels a start asks for by the same rule. Standard library only: settings import it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A label is `key` or `key=value`: no comma (the setting's separator), no space.
LABEL_RE = re.compile(r"[A-Za-z0-9_.:/-]+(=[A-Za-z0-9_.:/-]*)?")
LABEL_RULE = "up to 128 letters, digits, '_', '.', ':', '/' or '-', as key or key=value"
MAX_LABEL = 128


def is_label(value: object) -> bool:
    return isinstance(value, str) and len(value) <= MAX_LABEL and bool(LABEL_RE.fullmatch(value))


def worker_labels(entries: Iterable[str]) -> list[str]:
    """A worker's labels from `HUB_WORKER_LABELS` (already split at commas), repeats dropped;
    ValueError naming a malformed one, so no worker runs with a label no start can name."""
    labels: list[str] = []
    for entry in entries:
        entry = entry.strip()
        if not entry:
            continue
        if not is_label(entry):
            raise ValueError(f"HUB_WORKER_LABELS: {entry!r} is not a label: {LABEL_RULE}")
        if entry not in labels:
            labels.append(entry)
    return labels
