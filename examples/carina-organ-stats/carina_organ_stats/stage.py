"""The stage kind ``organ_stats.label_statistics``: after a segmentation's stages, the
statistics of each label over the CT, as ``statistics.json`` among the job's results."""

from __future__ import annotations

import json

from carina_organ_stats.statistics import label_statistics as statistics_of
from queues.app import app
from queues.payload import Payload
from workers.segmentation import CT, LABELS
from workers.stage import StageTask

LABEL_NAMES = {0: "background", 1: "spleen"}


@app.task(name="organ_stats.label_statistics", base=StageTask, bind=True)
def label_statistics(self: StageTask, payload: Payload) -> Payload:
    ct, labels = self.published(payload, CT), self.published(payload, LABELS)
    found = statistics_of(ct.array, labels.array, ct.metadata["spacing"], LABEL_NAMES)
    written = self.staging(payload) / "statistics.json"
    written.write_text(json.dumps(found, indent=2))
    return self.advance(payload, statistics=self.result(payload, written))
