"""The rules that route what arrives — a watch folder's drop, a DICOM series the listener
received — to a pipeline: one engine for both front doors (first match wins)."""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from queues.catalogue import catalogue
from queues.dispatch import destinations
from queues.errors import ConfigError
from queues.settings import PRIORITIES, Settings, get_settings

DICOM_TAGS = ("Modality", "BodyPartExamined", "SeriesDescription", "StudyDescription", "Manufacturer")
KINDS = ("slide", "volume", "dicom")


@dataclass(frozen=True)
class Rule:
    """Entries this rule takes, and the job they start.

    Attributes:
        pipeline: the pipeline to run.
        match: a glob on the entry's name, case-insensitive.
        kind: "slide", "volume", "dicom", or None for any.
        dicom: DICOM keyword → glob on its value (case-insensitive), all of which must hold
            (for DICOM entries; the first file's header is read).
        params: the pipeline's parameters; priority: lower, normal, higher or immediate.
        send_to: a destination of CARINA_DICOM_DESTINATIONS the job's DICOM results are sent
            to when it is done (the DICOM listener's jobs; :mod:`queues.dispatch`).
    """

    pipeline: str
    match: str = "*"
    kind: str | None = None
    dicom: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    priority: str = "normal"
    send_to: str | None = None

    def takes(self, name: str, kind: str, tags: dict[str, str]) -> bool:
        if not fnmatch.fnmatch(name.lower(), self.match.lower()):
            return False
        if self.kind is not None and kind != self.kind:
            return False
        return all(fnmatch.fnmatch(tags.get(key, "").lower(), pattern.lower()) for key, pattern in self.dicom.items())


DEFAULT_RULES = (
    Rule("nuclei-seg", kind="slide"),
    Rule("spleen-seg", kind="dicom", dicom={"Modality": "CT", "BodyPartExamined": "*ABDOMEN*"}),
    Rule("spleen-seg", kind="dicom", dicom={"Modality": "CT", "BodyPartExamined": "*SPLEEN*"}),
    Rule("3dblur", kind="dicom"),
    Rule("spleen-seg", kind="volume"),
)


def load_rules(path: str | Path, settings: Settings | None = None) -> tuple[Rule, ...]:
    """Rules from a JSON file: a list of objects with the fields of :class:`Rule`, e.g.
    ``[{"match": "*.svs", "pipeline": "nuclei-seg", "params": {"tile_size": 512}},
    {"kind": "dicom", "dicom": {"Modality": "CT"}, "pipeline": "3dblur", "priority": "higher"}]``.

    Raises:
        ConfigError: unreadable or malformed, an unknown field, pipeline, kind or priority.
    """
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"rules file {path}: {e}") from e
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"rules file {path}: expected a non-empty JSON list of rules")
    rules = []
    for number, item in enumerate(raw, start=1):
        where = f"rules file {path}, rule {number}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where}: expected an object")
        unknown = set(item) - set(Rule.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}")
        try:
            rule = Rule(**item)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e
        known = catalogue(settings or get_settings())
        if rule.pipeline not in known:
            raise ConfigError(f"{where}: unknown pipeline {rule.pipeline!r} ({', '.join(known)})")
        if rule.kind is not None and rule.kind not in KINDS:
            raise ConfigError(f"{where}: kind {rule.kind!r} is not one of {', '.join(KINDS)}")
        if rule.priority not in PRIORITIES:
            raise ConfigError(f"{where}: priority {rule.priority!r} is not one of {', '.join(PRIORITIES)}")
        if not isinstance(rule.match, str) or not isinstance(rule.dicom, dict) or not isinstance(rule.params, dict):
            raise ConfigError(f"{where}: match is a string, dicom and params are objects")
        if rule.send_to is not None:
            known_destinations = destinations(settings or get_settings())
            if rule.send_to not in known_destinations:
                raise ConfigError(f"{where}: send_to {rule.send_to!r} is not in CARINA_DICOM_DESTINATIONS "
                                  f"({', '.join(known_destinations) or 'none set'})")
        rules.append(rule)
    return tuple(rules)
