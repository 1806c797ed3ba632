"""The pipeline catalogue: pipelines as definitions, read and checked without importing numpy
or workers.

A definition (YAML or JSON) names a pipeline, says what it does, declares the job parameters
it takes (type, range, default) and lists its stages, each a **stage kind** — a task the
workers register — on a kind of queue::

    name: fastio-itk
    description: read a volume → crop with ITK → write output.mhd + render files
    parameters:
      crop_start: {type: xyz, description: first voxel (-1 = 0)}
    checks: [crop_inside_volume]
    stages:
      - {kind: carina.fastio_itk.read_volume, queue: io}

Parameter types: ``integer``, ``number`` (given as a float), ``string``, ``xyz`` (three
integers X Y Z). Bounds: ``minimum``/``maximum`` (inclusive; ``maximum`` may be
``<parameter> / <n>``, an earlier parameter's value divided), ``exclusive_minimum``/
``exclusive_maximum``, ``multiple_of``; strings take ``pattern`` (the whole value) and
``max_length``. A parameter with a ``default`` always reaches the stages; one without is
passed only when given. ``explain`` says what a good value is, in the error a bad one gets.
``checks`` name the checks of :data:`CHECKS` that hold the parameters to the input itself.

``settings`` is the pipeline's recipe, which its stages read and a job cannot change: the
model's spacing, intensity window, window size, output channels (:data:`KIND_SETTINGS` says
which each of the project's stage kinds takes, and of what form; a package's kinds take any).

Definitions come from three places, in this order: the project's own (``queues/definitions``),
a folder (``CARINA_PIPELINES_DIR``), and Python packages through the entry-point group
``carina.pipelines`` (each names a module; its ``*.yaml``, ``*.yml`` and ``*.json`` files are
definitions). Stage kinds are the project's (:data:`BUILTIN_STAGE_KINDS`) and those packages
add through the group ``carina.stages`` (each entry point named after the task it
registers). A definition with any fault is refused with its file and field named, and the
catalogue is not loaded at all: nothing is half-registered.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Callable

import yaml

from queues.crop import DEFAULT as DEFAULT_CROP
from queues.crop import resolve_crop
from queues.errors import ConfigError, InvalidJobRequest, UnknownPipeline
from queues.headers import volume_file, volume_size
from queues.settings import QUEUE_KINDS, Settings

BUILTIN_DIR = Path(__file__).parent / "definitions"
DEFINITION_SUFFIXES = (".yaml", ".yml", ".json")
PIPELINES_GROUP, STAGES_GROUP = "carina.pipelines", "carina.stages"
# The stage kinds the project's workers register (a test holds the two lists together).
BUILTIN_STAGE_KINDS = (
    "carina.fastio_itk.read_volume", "carina.fastio_itk.filter_volume", "carina.fastio_itk.write_volume",
    "carina.3dblur.read_series", "carina.3dblur.blur", "carina.3dblur.write_series",
    "carina.segmentation.read_volume", "carina.segmentation.infer", "carina.segmentation.write_results",
    "carina.nuclei.find_tissue", "carina.nuclei.segment", "carina.nuclei.write_results",
)
TYPES = ("integer", "number", "string", "xyz")


def _numbers(count: int, positive: bool = False, integers: bool = False) -> Callable[[Any], bool]:
    def holds(value: Any) -> bool:
        kinds = (int,) if integers else (int, float)
        return (isinstance(value, list) and len(value) == count
                and all(isinstance(v, kinds) and not isinstance(v, bool) and (not positive or v > 0) for v in value))
    return holds


_WORLD_AXIS = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}  # orientation codes (ops/orientation.py)
# The settings each of the project's stage kinds reads: name → (test of a value, what it must be).
_SEGMENTATION = {
    "roi_size": (_numbers(3, positive=True, integers=True), "the window in voxels, three positive integers (z, y, x)"),
    "target_spacing_xyz": (_numbers(3, positive=True),
                           "the model's voxel size in mm, three positive numbers (x, y, z)"),
    "intensity_window": (lambda v: _numbers(2)(v) and v[0] < v[1], "[low, high]: the values mapped to 0 and 1"),
    "output_channels": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 256,
                        "the model's output channels, 1 to 256"),
    "intensity_range": (lambda v: _numbers(2)(v) and v[0] < v[1], "[low, high]: what the window maps onto"),
    "intensity_clip": (lambda v: isinstance(v, bool), "true or false: clip to intensity_range"),
    "normalize_intensity": (lambda v: v in ("all", "nonzero"),
                            "all or nonzero: mean 0 and standard deviation 1, instead of a window"),
    "orientation": (lambda v: isinstance(v, str) and len(v) == 3
                    and {_WORLD_AXIS.get(c) for c in v.upper()} == {0, 1, 2},
                    "three letters of R/L, A/P, S/I, the directions the model's x, y and z run (e.g. RAS)"),
    "blend_mode": (lambda v: v in ("constant", "gaussian"), "constant or gaussian: how overlapping windows blend"),
    "label_resampling": (lambda v: v in ("nearest", "linear"),
                         "nearest (labels) or linear (probabilities, then argmax): how labels return to the input"),
    "label_names": (lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and k.isdigit() and isinstance(n, str) for k, n in v.items()),
                    "the name of each label value, as {\"1\": \"spleen\"}"),
}
KIND_SETTINGS: dict[str, dict[str, tuple[Callable[[Any], bool], str]]] = {
    "carina.segmentation.read_volume": {k: _SEGMENTATION[k] for k in ("roi_size", "target_spacing_xyz")},
    "carina.segmentation.infer": {k: v for k, v in _SEGMENTATION.items() if k != "label_names"},
    "carina.segmentation.write_results": {k: _SEGMENTATION[k] for k in ("label_names",)},
    "carina.nuclei.segment": {
        "threshold": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < 1,
                      "the probability from which a pixel is a nucleus, above 0 and below 1"),
        "input_layout": (lambda v: v in ("channels_first", "channels_last"),
                         "channels_first (B, 3, S, S) or channels_last (B, S, S, 3): the model's tiles"),
        "jpeg_quality": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 100,
                         "the pyramid's JPEG quality, 1 to 100"),
    },
}
PARAMETER_FIELDS = {"type", "default", "minimum", "maximum", "exclusive_minimum", "exclusive_maximum",
                    "multiple_of", "pattern", "max_length", "explain", "description"}
DEFINITION_FIELDS = {"name", "description", "parameters", "settings", "checks", "stages"}
STAGE_FIELDS = {"kind", "queue"}
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]*")
RELATIVE_BOUND = re.compile(r"(\w+)\s*/\s*(\d+)")  # "tile_size / 2"


@dataclass(frozen=True)
class Stage:
    """A stage: its kind (the task the workers register) and the kind of queue (io, cpu, gpu) it runs on."""

    task: str
    queue: str


@dataclass(frozen=True)
class Parameter:
    """A job parameter as a definition declares it (see the module's docstring)."""

    name: str
    type: str
    default: Any = None
    minimum: float | str | None = None
    maximum: float | str | None = None
    exclusive_minimum: float | None = None
    exclusive_maximum: float | None = None
    multiple_of: int | None = None
    pattern: str | None = None
    max_length: int | None = None
    explain: str = ""
    description: str = ""

    def bound(self, which: str, checked: dict[str, Any]) -> float | None:
        """``minimum`` or ``maximum``, a relative one worked out from ``checked`` values."""
        value = getattr(self, which)
        if isinstance(value, str):
            match = RELATIVE_BOUND.fullmatch(value.strip())
            assert match, value  # checked when the definition was read
            other = checked.get(match.group(1))
            return None if other is None else other // int(match.group(2))
        return value

    def check(self, value: Any, checked: dict[str, Any]) -> Any:
        """``value`` checked and in its type (a number as a float, xyz as a list).

        Raises:
            InvalidJobRequest: ``name=value: explain``.
        """
        low, high = self.bound("minimum", checked), self.bound("maximum", checked)
        if not self._holds(value, low, high):
            raise InvalidJobRequest(f"{self.name}={value!r}: {self._explanation(low, high)}")
        if self.type == "number":
            return float(value)
        return list(value) if self.type == "xyz" else value

    def _holds(self, value: Any, low: float | None, high: float | None) -> bool:
        if self.type == "xyz":
            return (isinstance(value, (list, tuple)) and len(value) == 3
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
        if self.type == "string":
            return (isinstance(value, str) and (self.pattern is None or re.fullmatch(self.pattern, value) is not None)
                    and (self.max_length is None or len(value) <= self.max_length))
        kinds = (int,) if self.type == "integer" else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            return False
        return ((low is None or value >= low) and (high is None or value <= high)
                and (self.exclusive_minimum is None or value > self.exclusive_minimum)
                and (self.exclusive_maximum is None or value < self.exclusive_maximum)
                and (self.multiple_of is None or value % self.multiple_of == 0))

    def _explanation(self, low: float | None, high: float | None) -> str:
        if self.explain:
            return self.explain.format(minimum=low, maximum=high, multiple_of=self.multiple_of)
        if self.type == "xyz":
            return "expected three integers X Y Z"
        what = {"integer": "an integer", "number": "a number", "string": "a string"}[self.type]
        if low is not None and high is not None:
            return f"{what} from {low:g} to {high:g}"
        return what


@dataclass(frozen=True)
class Pipeline:
    """A pipeline as its definition gives it, and where that definition came from."""

    name: str
    description: str
    stages: tuple[Stage, ...]
    parameters: tuple[Parameter, ...] = ()
    settings: dict[str, Any] = field(default_factory=dict, compare=False)
    checks: tuple[str, ...] = ()
    source: str = "carina"  # "carina", "folder <path>" or "package <distribution> (<entry point>)"
    path: str = ""  # the definition's file
    definition: dict[str, Any] = field(default_factory=dict, compare=False)  # as read

    def validate(self, params: dict[str, Any]) -> dict[str, Any]:
        """The job's parameters checked, with the defaults of those not given.

        Raises:
            InvalidJobRequest: a parameter this pipeline does not take, or a bad value.
        """
        known = {p.name for p in self.parameters}
        unknown = set(params) - known
        if unknown:
            raise InvalidJobRequest(f"{self.name} does not take {sorted(unknown)}")
        checked: dict[str, Any] = {}
        for parameter in self.parameters:
            value = params.get(parameter.name, parameter.default)
            if value is not None:
                checked[parameter.name] = parameter.check(value, checked)
        return checked

    def check_input(self, input: Path, params: dict[str, Any]) -> None:
        """The definition's checks of the checked parameters against the input.

        Raises:
            InvalidJobRequest: one of them fails, with the file named.
        """
        for name in self.checks:
            CHECKS[name](input, params)

    def summary(self) -> dict[str, Any]:
        """The definition as the API and ``carina pipelines show`` give it, with its source."""
        return {**self.definition, "source": self.source, "path": self.path}


def crop_inside_volume(input: Path, params: dict[str, Any]) -> None:
    """The crop against the size the input's header declares; a volume the front door cannot
    size here (no such file on this host, an unreadable header) is left to the worker."""
    volume = volume_file(input)
    size = volume_size(volume) if volume else None
    if size is None or not ({"crop_start", "crop_size"} & params.keys()):
        return
    try:
        resolve_crop(size, params.get("crop_start", [DEFAULT_CROP] * 3), params.get("crop_size", [DEFAULT_CROP] * 3))
    except InvalidJobRequest as e:
        raise InvalidJobRequest(f"{volume.name}: {e}") from None


# Checks a definition may name: (the input as given, the checked parameters) → raise InvalidJobRequest.
CHECKS: dict[str, Callable[[Path, dict[str, Any]], None]] = {"crop_inside_volume": crop_inside_volume}


class DefinitionError(ConfigError):
    """A definition that cannot be used: the file and the field are named."""


def parse_definition(raw: Any, where: str, stage_kinds: set[str], source: str = "carina") -> Pipeline:
    """A pipeline from a definition's parsed content.

    Raises:
        DefinitionError: ``where: field: what is wrong``.
    """
    def fail(path: str, problem: str) -> DefinitionError:
        return DefinitionError(f"{where}: {path}: {problem}" if path else f"{where}: {problem}")

    if not isinstance(raw, dict):
        raise fail("", "expected a mapping (name, description, parameters, stages)")
    unknown = set(raw) - DEFINITION_FIELDS
    if unknown:
        raise fail(sorted(unknown)[0], f"unknown field (a definition has {', '.join(sorted(DEFINITION_FIELDS))})")
    name, description = raw.get("name"), raw.get("description", "")
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise fail("name", f"{name!r}: lower-case letters, digits, '.', '_' and '-'")
    if not isinstance(description, str):
        raise fail("description", "expected text")
    parameters = _parameters(raw.get("parameters") or {}, fail)
    checks = raw.get("checks") or []
    if not isinstance(checks, list) or any(check not in CHECKS for check in checks):
        raise fail("checks", f"{checks!r}: a list of {', '.join(CHECKS)}")
    stages = raw.get("stages")
    if not isinstance(stages, list) or not stages:
        raise fail("stages", "expected a list of stages, each {kind, queue}")
    parsed: list[Stage] = []
    for n, stage in enumerate(stages):
        at = f"stages[{n}]"
        if not isinstance(stage, dict) or set(stage) - STAGE_FIELDS or "kind" not in stage or "queue" not in stage:
            raise fail(at, "expected {kind: <stage kind>, queue: <io|cpu|gpu>}")
        if stage["kind"] not in stage_kinds:
            raise fail(f"{at}.kind", f"{stage['kind']!r} is not a stage kind the workers know "
                                     f"({len(stage_kinds)} known: the project's and the {STAGES_GROUP} entry points)")
        if stage["queue"] not in QUEUE_KINDS:
            raise fail(f"{at}.queue", f"{stage['queue']!r} is not a kind of queue ({', '.join(QUEUE_KINDS)})")
        parsed.append(Stage(stage["kind"], stage["queue"]))
    settings = _settings(raw.get("settings") or {}, parsed, fail)
    return Pipeline(name=name, description=" ".join(description.split()), stages=tuple(parsed),
                    parameters=parameters, settings=settings, checks=tuple(checks), source=source, path=where,
                    definition=raw)


def _settings(raw: Any, stages: list[Stage], fail: Callable[[str, str], DefinitionError]) -> dict[str, Any]:
    """The recipe, each setting read by one of the stages' kinds and of the form it takes."""
    if not isinstance(raw, dict):
        raise fail("settings", "expected a mapping of setting → value")
    taken = {name: form for stage in stages for name, form in KIND_SETTINGS.get(stage.task, {}).items()}
    free = any(stage.task not in BUILTIN_STAGE_KINDS for stage in stages)  # a package's kind may read any
    for name, value in raw.items():
        if name in taken and not taken[name][0](value):
            raise fail(f"settings.{name}", f"{value!r}: {taken[name][1]}")
        if name not in taken and not free:
            raise fail(f"settings.{name}", f"no stage of this pipeline reads it ({', '.join(sorted(taken)) or 'none'})")
    if "normalize_intensity" in raw and "intensity_window" in raw:
        raise fail("settings.normalize_intensity", "the recipe gives intensity_window too: one or the other")
    return dict(raw)


def _parameters(raw: Any, fail: Callable[[str, str], DefinitionError]) -> tuple[Parameter, ...]:
    if not isinstance(raw, dict):
        raise fail("parameters", "expected a mapping of parameter name → {type, …}")
    parameters: list[Parameter] = []
    for name, spec in raw.items():
        at = f"parameters.{name}"
        if not isinstance(spec, dict):
            raise fail(at, "expected a mapping {type, default, minimum, …}")
        unknown = set(spec) - PARAMETER_FIELDS
        if unknown:
            raise fail(f"{at}.{sorted(unknown)[0]}", f"unknown field ({', '.join(sorted(PARAMETER_FIELDS))})")
        if spec.get("type") not in TYPES:
            raise fail(f"{at}.type", f"{spec.get('type')!r}: one of {', '.join(TYPES)}")
        for bound in ("minimum", "maximum"):
            value = spec.get(bound)
            if isinstance(value, str):
                match = RELATIVE_BOUND.fullmatch(value.strip())
                if not match or match.group(1) not in {p.name for p in parameters}:
                    raise fail(f"{at}.{bound}", f"{value!r}: a number, or '<an earlier parameter> / <n>'")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise fail(f"{at}.{bound}", f"{value!r}: a number")
        try:
            parameter = Parameter(name=name, **spec)
            if parameter.pattern is not None:
                re.compile(parameter.pattern)
        except (TypeError, re.error) as e:
            raise fail(at, str(e)) from None
        if parameter.default is not None:
            try:
                parameter.check(parameter.default, {p.name: p.default for p in parameters})
            except InvalidJobRequest as e:
                raise fail(f"{at}.default", f"outside what the parameter takes ({e})") from None
        parameters.append(parameter)
    return tuple(parameters)


def read_definition(path: Path, stage_kinds: set[str], source: str) -> Pipeline:
    """The pipeline defined in ``path`` (YAML, or JSON by its suffix).

    Raises:
        DefinitionError: unreadable, not YAML/JSON, or a fault in the definition.
    """
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DefinitionError(f"{path}: cannot be read as a definition: {reason}") from None
    return parse_definition(raw, str(path), stage_kinds, source)


def stage_kinds() -> set[str]:
    """The project's stage kinds and those Python packages add (entry points of ``carina.stages``)."""
    return set(BUILTIN_STAGE_KINDS) | {ep.name for ep in metadata.entry_points(group=STAGES_GROUP)}


def definition_files(settings: Settings) -> list[tuple[Path, str]]:
    """Every definition file and its source, in the catalogue's order.

    Raises:
        DefinitionError: CARINA_PIPELINES_DIR is not a folder, or a package's entry point cannot be loaded.
    """
    def listed(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.suffix in DEFINITION_SUFFIXES and p.is_file())

    files = [(path, "carina") for path in listed(BUILTIN_DIR)]
    if settings.pipelines_dir is not None:
        if not settings.pipelines_dir.is_dir():
            raise DefinitionError(f"CARINA_PIPELINES_DIR={settings.pipelines_dir}: not a folder")
        files += [(path, f"folder {settings.pipelines_dir}") for path in listed(settings.pipelines_dir)]
    for ep in metadata.entry_points(group=PIPELINES_GROUP):
        try:
            folder = Path(str(resources.files(ep.load())))
        except Exception as e:  # a broken plugin is named, whatever it raised
            raise DefinitionError(f"entry point {ep.name} = {ep.value} ({PIPELINES_GROUP}): cannot be loaded: "
                                  f"{type(e).__name__}: {e}") from None
        package = ep.dist.name if ep.dist else ep.value
        files += [(path, f"package {package} ({ep.name})") for path in listed(folder)]
    return files


def load_catalogue(settings: Settings) -> dict[str, Pipeline]:
    """Every pipeline, by name, from every source.

    Raises:
        DefinitionError: any definition is faulty, or two define the same name (both named).
    """
    kinds = stage_kinds()
    found: dict[str, Pipeline] = {}
    for path, source in definition_files(settings):
        pipeline = read_definition(path, kinds, source)
        if pipeline.name in found:
            first = found[pipeline.name]
            raise DefinitionError(f"{path}: name: pipeline {pipeline.name!r} is defined twice: by {first.path} "
                                  f"({first.source}) and here ({source})")
        found[pipeline.name] = pipeline
    return found


@lru_cache(maxsize=8)
def catalogue(settings: Settings) -> dict[str, Pipeline]:
    """The catalogue of ``settings``, read once per process."""
    return load_catalogue(settings)


def get_pipeline(settings: Settings, name: str) -> Pipeline:
    """Raises UnknownPipeline (with the known names) where the catalogue has no ``name``."""
    pipelines = catalogue(settings)
    try:
        return pipelines[name]
    except KeyError:
        raise UnknownPipeline(name, sorted(pipelines)) from None
