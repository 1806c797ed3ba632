"""The job payload: the small JSON document every stage takes as its first argument and
returns, updated, for the next one. ``queues.pipelines.submit`` makes the first one."""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict


class TraceEntry(TypedDict):
    stage: str  # the task name
    host: str  # the host id of the worker that ran it


class Payload(TypedDict):
    job: str  # the job id
    pipeline: str
    input: str  # absolute path, as the workers see it
    output: str  # absolute path of the output folder
    config: str | None  # absolute path of the job's configuration folder
    params: dict[str, Any]  # the pipeline's parameters, validated at submit
    settings: NotRequired[dict[str, Any]]  # the definition's recipe for its stages (queues/catalogue.py)
    handles: dict[str, str]  # publication name → FastIO publication, added by each stage that publishes
    trace: list[TraceEntry]  # one entry per stage run, in order
    restarts: int  # how many times the job had started again from its input when this chain was queued
    # Added by stages on the way:
    study: NotRequired[str]  # spleen-seg: the input's name, which the label volume takes
    source_series: NotRequired[list[str]]  # segmentation of a DICOM series: its files in z order (for the SEG)
    slide: NotRequired[str]  # nuclei-seg: the slide file found in the input
    result: NotRequired[str]  # the main file or folder written
    files: NotRequired[int]  # 3dblur: DICOM files written
    tiles: NotRequired[int]  # nuclei-seg: tiles in the grid
    tissue_tiles: NotRequired[int]  # nuclei-seg: of those, tiles with tissue


def first_payload(job_id: str, pipeline: str, input: str, output: str, config: str | None,
                  params: dict[str, Any], settings: dict[str, Any] | None = None) -> Payload:
    return Payload(job=job_id, pipeline=pipeline, input=input, output=output, config=config, params=params,
                   settings=settings or {}, handles={}, trace=[], restarts=0)


def recipe(payload: Payload, *names: str, **renamed: str) -> dict[str, Any]:
    """The definition's settings ``names`` that it gives, as an op's keyword arguments (lists as
    tuples); ``renamed`` maps an argument to the setting that feeds it (``mode="blend_mode"``).
    The op's defaults stand for the settings the definition leaves out."""
    settings = payload.get("settings") or {}
    wanted = {**{name: name for name in names}, **renamed}
    return {argument: tuple(v) if isinstance(v, list) else v
            for argument, setting in wanted.items() if (v := settings.get(setting)) is not None}
