"""MONAI bundles as Carina pipelines: ``carina import-bundle BUNDLE_DIR [--name NAME]``.

A bundle, in the layout MONAI documents, is a folder::

    configs/metadata.json      the network's inputs and outputs (channels, their names)
    configs/inference.json     (or .yaml) the inference recipe, as MONAI's config syntax
    models/model.ts            TorchScript, or models/model.onnx

The import reads the recipe as data (nothing of it is evaluated) and writes two things: a
Triton model folder (``interface.json``, ``config.pbtxt`` made from it, ``1/model.onnx`` and
the ``1/model.py`` every model of the project shares) and a pipeline definition of the
sliding-window segmentation stage kinds. What it maps:

==============================================  ===========================================
bundle                                          definition
==============================================  ===========================================
``Orientationd(axcodes)``                       ``settings.orientation``
``Spacingd(pixdim)`` (bilinear)                 ``settings.target_spacing_xyz``
``ScaleIntensityRanged(a_min, a_max, b_min,     ``settings.intensity_window``,
b_max, clip)``                                  ``intensity_range``, ``intensity_clip``
``NormalizeIntensityd(nonzero)``                ``settings.normalize_intensity``
``SlidingWindowInferer(roi_size, sw_batch_size, ``settings.roi_size`` (z, y, x),
overlap, mode)``                                the parameters' defaults, ``blend_mode``
``network_def.out_channels``, the metadata's    ``settings.output_channels``, ``label_names``
output ``num_channels`` and ``channel_def``
``Activationsd(softmax)``, ``Invertd``,         ``settings.label_resampling``: ``linear``
``AsDiscreted(argmax)``                         where probabilities are inverted
                                                (``nearest_interp=False``), else ``nearest``
``LoadImaged``, ``EnsureChannelFirstd``,        nothing: Carina reads and writes the images
``EnsureTyped``, ``ToTensord``, ``SaveImaged``  itself (listed as such in the report)
==============================================  ===========================================

A MONAI network takes windows with axes (x, y, z); Carina's arrays are (z, y, x). The graph
written transposes at its input and its output, so the model folder speaks Carina's order
and the op needs no knob for it. Anything else (an unknown transform, a setting with no
counterpart, an expression where a value is needed, transforms in an order Carina does not
run them in) is listed, all of it, in one :class:`BundleError`, and nothing is written. The
model is checked before anything is written: the ONNX graph, run by onnxruntime, must give
the bundle's network's output on a random window.

A TorchScript model needs torch (``pip install 'carina[bundle]'``); an ONNX one needs onnx.
Triton serves the new folder once restarted, and the front doors read the definition when
they start (the CLI's commands each time).
"""

from __future__ import annotations

import json
import os
import re
import runpy
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import yaml

from carina.triton import MODEL_REPOSITORY
from queues.catalogue import NAME_PATTERN, parse_definition, stage_kinds
from queues.errors import ConfigError

INPUT, OUTPUT = "INPUT__0", "OUTPUT__0"  # the tensor names of every model of the repository
SHARED_MODEL_PY = MODEL_REPOSITORY / "spleen_ct" / "1" / "model.py"
BACKEND_FILE = "onnx_backend.py"
OPSET = 17
MAX_BATCH_SIZE = 8
CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
# Transforms that change nothing Carina needs to know: it reads, types and writes the images itself.
NOT_NEEDED = {
    "LoadImaged": "Carina reads the input itself (MetaImage, NRRD, NIfTI, DICOM)",
    "LoadImage": "Carina reads the input itself (MetaImage, NRRD, NIfTI, DICOM)",
    "EnsureChannelFirstd": "the volume is one channel",
    "EnsureChannelFirst": "the volume is one channel",
    "EnsureTyped": "arrays are float32 already", "EnsureType": "arrays are float32 already",
    "ToTensord": "arrays are float32 already", "ToTensor": "arrays are float32 already",
    "SaveImaged": "Carina writes the labels (.mhd named as the input, and the publish folder)",
    "SaveImage": "Carina writes the labels (.mhd named as the input, and the publish folder)",
}
# Arguments of a transform or inferer that do not change its result.
HARMLESS = {"keys", "allow_missing_keys", "meta_keys", "meta_key_postfix", "orig_keys", "orig_meta_keys",
            "transform", "to_tensor", "device", "sw_device", "progress", "cache_roi_weight_map", "dtype",
            "_requires_", "_disabled_", "_desc_", "_mode_", "post_func", "nearest_interp", "labels", "mode",
            "softmax", "argmax", "pixdim", "axcodes", "a_min", "a_max", "b_min", "b_max", "clip", "nonzero",
            "channel_wise", "roi_size", "sw_batch_size", "overlap", "sigma_scale", "padding_mode", "cval",
            "align_corners", "dim", "keepdim", "track_meta", "image_only", "reader", "ensure_channel_first",
            "output_dir", "output_postfix", "output_ext", "resample", "separate_folder", "print_log",
            "squeeze_end_dims", "data_root_dir", "output_dtype", "writer", "simple_keys", "channel_dim",
            "strict_check", "diagonal", "recompute_affine", "scale_extent", "min_pixdim", "max_pixdim"}


class BundleError(ConfigError):
    """A bundle Carina cannot import: every problem, each with its file and field."""


@dataclass
class Mapping:
    """What an import makes of a bundle: the definition's settings and parameter defaults,
    the network's label names, and the report (each line a transform and what became of it)."""

    settings: dict[str, Any] = field(default_factory=dict)
    overlap: float = 0.25
    sw_batch_size: int = 1
    report: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Imported:
    """What :func:`import_bundle` wrote."""

    pipeline: str
    model_folder: Path
    definition: Path
    report: list[str]


def _read(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise BundleError(f"{path}: cannot be read: {reason}") from None


class _Config:
    """A bundle config read as data: ``@id`` references followed (``::`` or ``#`` between
    levels), ``$`` expressions and ``%`` macros refused where a value is needed."""

    def __init__(self, raw: dict[str, Any], path: Path):
        self.raw, self.path = raw, path

    def lookup(self, reference: str) -> Any:
        node: Any = self.raw
        for part in re.split(r"::|#", reference):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise KeyError(reference)
        return node

    def value(self, value: Any, where: str, problems: list[str], depth: int = 0) -> Any:
        """``value`` with its references followed; None (and a problem) where it cannot be known."""
        if isinstance(value, str) and value.startswith("@") and depth < 16:
            try:
                return self.value(self.lookup(value[1:]), where, problems, depth + 1)
            except KeyError:
                problems.append(f"{self.path.name}: {where}: {value!r} refers to nothing in the config")
                return None
        if isinstance(value, str) and value[:1] in ("$", "%"):
            problems.append(f"{self.path.name}: {where}: {value!r} is an expression; Carina reads values only")
            return None
        return value


def _target(component: Any) -> str | None:
    if isinstance(component, dict) and isinstance(component.get("_target_"), str):
        return component["_target_"].rsplit(".", 1)[-1]
    return None


def _transforms(config: _Config, key: str, problems: list[str]) -> list[tuple[str, dict[str, Any]]]:
    """The (where, transform) of a ``Compose`` (or list) at ``key``; [] where the config has none."""
    node = config.value(config.raw.get(key), key, problems)
    if node is None:
        return []
    where = key
    if _target(node) == "Compose":
        node, where = config.value(node.get("transforms"), f"{key}.transforms", problems), f"{key}.transforms"
    if not isinstance(node, list):
        problems.append(f"{config.path.name}: {where}: expected a Compose of transforms or a list of them")
        return []
    found = []
    for n, item in enumerate(node):
        item = config.value(item, f"{where}[{n}]", problems)
        if item is not None:
            found.append((f"{where}[{n}]", item))
    return found


class _Unknowable(Exception):
    """An argument whose value cannot be read (the problem is recorded): its component is skipped."""


def _argument(config: _Config, component: dict[str, Any], where: str, problems: list[str], name: str,
              default: Any = None) -> Any:
    """Argument ``name`` of ``component`` (at ``where``), its references followed; ``default`` where absent.

    Raises: _Unknowable: an expression or a dangling reference (recorded in ``problems``)."""
    if name not in component:
        return default
    before = len(problems)
    value = config.value(component[name], f"{where}.{name}", problems)
    if len(problems) > before:
        raise _Unknowable(name)
    return value


def _numbers(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))


def _map_preprocessing(config: _Config, mapping: Mapping) -> None:
    order: list[str] = []
    for where, transform in _transforms(config, "preprocessing", mapping.problems):
        try:
            step = _map_preprocessing_step(config, mapping, where, transform)
        except _Unknowable:
            continue
        if step:
            order.append(step)
    if "spacing" not in order:
        mapping.problems.append(f"{config.path.name}: preprocessing: no Spacingd; Carina resamples every image "
                                f"to the model's spacing")
    elif order != sorted(order, key=["orientation", "spacing", "intensity"].index):
        mapping.problems.append(f"{config.path.name}: preprocessing: {' → '.join(order)}: Carina orients, then "
                                f"resamples, then scales intensities, in that order")
    if "intensity" not in order:
        mapping.problems.append(f"{config.path.name}: preprocessing: no ScaleIntensityRanged or "
                                f"NormalizeIntensityd; Carina needs one")


def _map_preprocessing_step(config: _Config, mapping: Mapping, where: str, transform: Any) -> str | None:
    """Map one preprocessing transform; its step (orientation, spacing, intensity) or None."""
    name = _target(transform) or repr(transform)[:40]
    at = f"{config.path.name}: {where} ({name})"
    arg = partial(_argument, config, transform, where, mapping.problems)
    if name in NOT_NEEDED:
        mapping.report.append(f"{where} {name}: not needed ({NOT_NEEDED[name]})")
        return None
    step = None
    if name == "Orientationd":
        codes, step = arg("axcodes"), "orientation"
        if not (isinstance(codes, str) and len(codes) == 3):
            mapping.problems.append(f"{at}: axcodes {codes!r}: three letters (e.g. 'RAS') are needed")
        else:
            mapping.settings["orientation"] = codes.upper()
            mapping.report.append(f"{where} Orientationd: orientation {codes.upper()}")
    elif name == "Spacingd":
        pixdim, interpolation, step = arg("pixdim"), arg("mode", "bilinear"), "spacing"
        if not (_numbers(pixdim, 3) and all(v > 0 for v in pixdim)):
            mapping.problems.append(f"{at}: pixdim {pixdim!r}: three positive spacings (mm) are needed")
        elif interpolation not in ("bilinear", "linear", 1):
            mapping.problems.append(f"{at}: mode {interpolation!r}: Carina resamples the image linearly only")
        else:
            mapping.settings["target_spacing_xyz"] = [float(v) for v in pixdim]
            mapping.report.append(f"{where} Spacingd: target_spacing_xyz {pixdim}")
        if arg("padding_mode", "border") != "border" or arg("align_corners", False) is not False:
            mapping.problems.append(f"{at}: padding_mode or align_corners: Carina resamples as MONAI's "
                                    f"defaults do (border, align_corners False) only")
    elif name == "ScaleIntensityRanged":
        low, high, b_min, b_max, step = arg("a_min"), arg("a_max"), arg("b_min"), arg("b_max"), "intensity"
        if not (_numbers([low, high], 2) and low < high):
            mapping.problems.append(f"{at}: a_min {low!r}, a_max {high!r}: two numbers, a_min below a_max")
        elif (b_min is None) != (b_max is None) or (b_min is not None and not (_numbers([b_min, b_max], 2)
                                                                              and b_min < b_max)):
            mapping.problems.append(f"{at}: b_min {b_min!r}, b_max {b_max!r}: both numbers, in order, or neither")
        else:
            out = [0.0, 1.0] if b_min is None else [float(b_min), float(b_max)]
            clip = bool(arg("clip", False)) and b_min is not None
            mapping.settings.update(intensity_window=[float(low), float(high)], intensity_range=out,
                                    intensity_clip=clip)
            mapping.report.append(f"{where} ScaleIntensityRanged: intensity_window [{low}, {high}] onto {out}"
                                  f"{', clipped' if clip else ''}")
    elif name == "NormalizeIntensityd":
        step = "intensity"
        if arg("subtrahend") is not None or arg("divisor") is not None:
            mapping.problems.append(f"{at}: subtrahend/divisor: Carina normalises by the image's own "
                                    f"mean and standard deviation only")
        nonzero = "nonzero" if arg("nonzero", False) else "all"
        mapping.settings["normalize_intensity"] = nonzero
        mapping.report.append(f"{where} NormalizeIntensityd: normalize_intensity {nonzero}")
    else:
        mapping.problems.append(f"{at}: a transform Carina cannot map")
        return None
    unknown = sorted(set(transform) - HARMLESS - {"_target_", "subtrahend", "divisor"})
    if unknown:
        mapping.problems.append(f"{at}: {', '.join(unknown)}: argument(s) Carina cannot map")
    return step


def _map_inferer(config: _Config, mapping: Mapping) -> None:
    inferer = config.value(config.raw.get("inferer"), "inferer", mapping.problems)
    at = f"{config.path.name}: inferer"
    if _target(inferer) != "SlidingWindowInferer":
        mapping.problems.append(f"{at}: {_target(inferer) or repr(inferer)}: Carina runs a SlidingWindowInferer only")
        return
    arg = partial(_argument, config, inferer, "inferer", mapping.problems)
    defaults = {"sigma_scale": 0.125, "padding_mode": "constant", "cval": 0}
    try:
        roi, batch, overlap = arg("roi_size"), arg("sw_batch_size", 1), arg("overlap", 0.25)
        blend = arg("mode", "constant")
        others = {name: arg(name, default) for name, default in defaults.items()}
    except _Unknowable:
        return
    if not (_numbers(roi, 3) and all(isinstance(v, int) and v > 0 for v in roi)):
        mapping.problems.append(f"{at}: roi_size {roi!r}: three positive integers are needed")
    else:
        mapping.settings["roi_size"] = list(roi[::-1])  # MONAI's (x, y, z) → Carina's (z, y, x)
    if not (isinstance(batch, int) and 1 <= batch <= 64):
        mapping.problems.append(f"{at}: sw_batch_size {batch!r}: an integer from 1 to 64")
    else:
        mapping.sw_batch_size = batch
    if not (isinstance(overlap, (int, float)) and not isinstance(overlap, bool) and 0 <= overlap <= 0.9):
        mapping.problems.append(f"{at}: overlap {overlap!r}: one number from 0 to 0.9")
    else:
        mapping.overlap = float(overlap)
    if blend not in ("constant", "gaussian"):
        mapping.problems.append(f"{at}: mode {blend!r}: constant or gaussian")
    else:
        mapping.settings["blend_mode"] = blend
    for name, default in defaults.items():
        if others[name] != default:
            mapping.problems.append(f"{at}: {name} {others[name]!r}: Carina runs MONAI's default ({default!r}) only")
    unknown = sorted(set(inferer) - HARMLESS - {"_target_"})
    if unknown:
        mapping.problems.append(f"{at}: {', '.join(unknown)}: argument(s) Carina cannot map")
    mapping.report.append(f"inferer SlidingWindowInferer: roi_size {roi} (x, y, z), sw_batch_size {batch}, "
                          f"overlap {overlap}, blend_mode {blend}")


def _postprocessing_step(name: str, arg: Callable[..., Any]) -> str | None:
    """softmax, invert or argmax: what a postprocessing transform does, if Carina does it too."""
    if name == "Activationsd" and arg("softmax", False) is True and not arg("sigmoid", False):
        return "softmax"
    if name == "Invertd":
        return "invert"
    if name == "AsDiscreted" and arg("argmax", False) is True and not arg("to_onehot") and arg("threshold") is None:
        return "argmax"
    return None


def _map_postprocessing(config: _Config, mapping: Mapping) -> None:
    steps: list[str] = []
    linear = False
    for where, transform in _transforms(config, "postprocessing", mapping.problems):
        name = _target(transform) or repr(transform)[:40]
        at = f"{config.path.name}: {where} ({name})"
        arg = partial(_argument, config, transform, where, mapping.problems)
        if name in NOT_NEEDED:
            mapping.report.append(f"{where} {name}: not needed ({NOT_NEEDED[name]})")
            continue
        try:
            step = _postprocessing_step(name, arg)
            if step == "invert":
                linear = arg("nearest_interp", True) is False
        except _Unknowable:
            continue
        if step:
            steps.append(step)
        else:
            mapping.problems.append(f"{at}: a transform Carina cannot map (it knows Activationsd(softmax), "
                                    f"Invertd, AsDiscreted(argmax))")
            continue
        mapping.report.append(f"{where} {name}: {steps[-1]}")
    if "invert" not in steps or "argmax" not in steps:
        mapping.problems.append(f"{config.path.name}: postprocessing: Invertd and AsDiscreted(argmax) are needed: "
                                f"Carina returns labels on the input's own grid")
        return
    inverted_then_argmax = steps.index("invert") < steps.index("argmax")
    if linear and not (inverted_then_argmax and "softmax" in steps[:steps.index("invert")]):
        mapping.problems.append(f"{config.path.name}: postprocessing: {' → '.join(steps)} with "
                                f"Invertd(nearest_interp=False): Carina interpolates probabilities only, after a "
                                f"softmax and before the argmax")
        return
    # Nearest-neighbour inversion picks a voxel's channels whole: argmax before or after is the same.
    mapping.settings["label_resampling"] = "linear" if linear else "nearest"


def _map_network(config: _Config, metadata: dict[str, Any], meta_path: Path, mapping: Mapping) -> None:
    network = config.value(config.raw.get("network_def"), "network_def", mapping.problems) or {}
    formats = (metadata.get("network_data_format") or {}) if isinstance(metadata, dict) else {}
    inputs, outputs = formats.get("inputs") or {}, formats.get("outputs") or {}
    if not isinstance(inputs, dict) or not isinstance(outputs, dict) or len(inputs) != 1 or len(outputs) != 1:
        mapping.problems.append(f"{meta_path.name}: network_data_format: one input and one output are needed")
        return
    (in_name, tensor_in), (out_name, tensor_out) = next(iter(inputs.items())), next(iter(outputs.items()))
    in_channels = network.get("in_channels", tensor_in.get("num_channels"))
    if in_channels != 1 or tensor_in.get("num_channels", 1) != 1:
        mapping.problems.append(f"{meta_path.name}: network_data_format.inputs.{in_name}.num_channels "
                                f"{tensor_in.get('num_channels')!r} (network_def.in_channels {in_channels!r}): "
                                f"Carina segments one-channel images")
    channels = tensor_out.get("num_channels")
    names = tensor_out.get("channel_def") or {}
    declared = network.get("out_channels", channels)
    if not isinstance(channels, int) or not 1 <= channels <= 256:
        mapping.problems.append(f"{meta_path.name}: network_data_format.outputs.{out_name}.num_channels "
                                f"{channels!r}: 1 to 256")
        return
    if declared != channels:
        mapping.problems.append(f"{config.path.name}: network_def.out_channels {declared!r}, but "
                                f"{meta_path.name}'s outputs.{out_name} has {channels} channels")
    if names and (not isinstance(names, dict) or sorted(names, key=str) != sorted(map(str, range(channels)))):
        mapping.problems.append(f"{meta_path.name}: network_data_format.outputs.{out_name}.channel_def names "
                                f"{len(names) if isinstance(names, dict) else names!r} labels for {channels} "
                                f"output channels")
        return
    mapping.settings["output_channels"] = channels
    if names:
        mapping.settings["label_names"] = {str(k): str(v) for k, v in sorted(names.items(), key=lambda kv: int(kv[0]))}
    mapping.report.append(f"network: {channels} output channels" + (f" ({', '.join(map(str, names.values()))})"
                                                                    if names else ""))


def read_bundle(bundle: Path) -> tuple[Mapping, dict[str, Any]]:
    """The mapping of a bundle and its metadata, or every reason it cannot be imported.

    Raises:
        BundleError: no metadata or inference configuration, or anything :func:`import_bundle`
            cannot map (all of it, one line each).
    """
    bundle = Path(bundle)
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: not a folder (a MONAI bundle is one: configs/, models/)")
    meta_path = bundle / "configs" / "metadata.json"
    if not meta_path.is_file():
        raise BundleError(f"{meta_path}: missing; a MONAI bundle describes its network there")
    found = [bundle / "configs" / name for name in CONFIG_NAMES if (bundle / "configs" / name).is_file()]
    if not found:
        raise BundleError(f"{bundle / 'configs'}: no inference configuration ({', '.join(CONFIG_NAMES)})")
    metadata, raw = _read(meta_path), _read(found[0])
    if not isinstance(raw, dict):
        raise BundleError(f"{found[0]}: expected a mapping of ids to components")
    config, mapping = _Config(raw, found[0]), Mapping()
    _map_preprocessing(config, mapping)
    _map_inferer(config, mapping)
    _map_postprocessing(config, mapping)
    _map_network(config, metadata, meta_path, mapping)
    if mapping.problems:
        raise BundleError(f"{bundle}: cannot be imported, {len(mapping.problems)} problem(s):\n  "
                          + "\n  ".join(mapping.problems))
    return mapping, metadata if isinstance(metadata, dict) else {}


def model_file(bundle: Path) -> Path:
    """The bundle's ONNX or TorchScript model. Raises BundleError where it has neither."""
    for name in ("model.onnx", "model.ts"):
        if (bundle / "models" / name).is_file():
            return bundle / "models" / name
    hint = ""
    if (bundle / "models" / "model.pt").is_file():
        hint = ("; it has model.pt, weights without the network: make model.ts with "
                "`python -m monai.bundle ckpt_export network_def --filepath models/model.ts "
                "--ckpt_file models/model.pt --meta_file configs/metadata.json --config_file configs/inference.json`")
    raise BundleError(f"{bundle / 'models'}: no model.onnx or model.ts{hint}")


def _onnx_from_torchscript(source: Path, out: Path, roi_xyz: list[int]) -> None:
    """``out``: the TorchScript network as an ONNX graph, axes as the network has them."""
    try:
        import torch
    except ImportError:
        raise BundleError(f"{source}: a TorchScript model needs torch: pip install 'carina[bundle]'") from None
    try:
        network = torch.jit.load(str(source), map_location="cpu").eval()
        axes = {0: "batch"}
        warnings.filterwarnings("ignore", "no signature found", UserWarning)  # a ScriptModule has none to show
        torch.onnx.export(network, (torch.zeros((1, 1, *roi_xyz), dtype=torch.float32),), str(out), dynamo=False,
                          opset_version=OPSET, input_names=["windows"], output_names=["logits"],
                          dynamic_axes={"windows": axes, "logits": axes})
    except Exception as e:  # torch's loader and exporter raise many kinds; the model is named, with the first line
        raise BundleError(f"{source}: cannot be converted to ONNX: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _permuted_onnx(source: Path, out: Path) -> None:
    """``out``: the bundle's ONNX graph with transposes at both ends and the repository's tensor names."""
    try:
        import onnx
        from onnx import helper
    except ImportError:
        raise BundleError(f"{source}: an ONNX model needs the onnx package: pip install 'carina[bundle]'") from None
    try:
        model = onnx.load(str(source))
    except Exception as e:  # a damaged file raises protobuf's own errors
        raise BundleError(f"{source}: not an ONNX model: {type(e).__name__}") from None
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise BundleError(f"{source}: one input and one output are needed; it has {len(inputs)} and "
                          f"{len(graph.output)}")
    network_in, network_out = inputs[0], graph.output[0]
    graph.node.insert(0, helper.make_node("Transpose", [INPUT], [network_in.name], perm=[0, 1, 4, 3, 2]))
    graph.node.append(helper.make_node("Transpose", [network_out.name], [OUTPUT], perm=[0, 1, 4, 3, 2]))
    element = network_in.type.tensor_type.elem_type
    graph.input.remove(network_in)
    graph.input.insert(0, helper.make_tensor_value_info(INPUT, element, ["batch", 1, None, None, None]))
    out_element = network_out.type.tensor_type.elem_type
    graph.output.remove(network_out)
    graph.output.append(helper.make_tensor_value_info(OUTPUT, out_element, ["batch", None, None, None, None]))
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx's ValidationError and others
        raise BundleError(f"{source}: the graph is not valid ONNX: {str(e).splitlines()[0]}") from None
    onnx.save(model, str(out))


def _check_converted(source: Path, onnx_path: Path, roi_zyx: list[int], channels: int) -> None:
    """The written graph against the bundle's own model, on one random batch of two windows.

    Raises: BundleError: a wrong output shape, or values that differ beyond float32 rounding."""
    import numpy as np
    import onnxruntime as ort

    windows = np.random.default_rng(0).random((2, 1, *roi_zyx), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run([OUTPUT], {INPUT: windows})[0]
    if got.shape != (2, channels, *roi_zyx):
        raise BundleError(f"{source}: gives {list(got.shape)} for windows {[2, 1, *roi_zyx]}; "
                          f"{[2, channels, *roi_zyx]} was expected ({channels} output channels)")
    if source.suffix == ".ts":
        import torch

        with torch.no_grad():
            expected = torch.jit.load(str(source), map_location="cpu").eval()(
                torch.from_numpy(windows.transpose(0, 1, 4, 3, 2).copy())).numpy().transpose(0, 1, 4, 3, 2)
    else:
        original = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
        expected = original.run(None, {original.get_inputs()[0].name: windows.transpose(0, 1, 4, 3, 2).copy()})[0]
        expected = expected.transpose(0, 1, 4, 3, 2)
    error = float(np.abs(got - expected).max())
    if error > 1e-4 * max(1.0, float(np.abs(expected).max())):
        raise BundleError(f"{source}: the converted graph differs from the bundle's model by {error:.3g}")


def _build_model(source: Path, built: Path, interface: dict[str, Any], mapping: Mapping, config: Any) -> None:
    """The model folder in ``built``: the converted graph, checked, its interface and config."""
    (built / "1").mkdir(parents=True)
    roi = mapping.settings["roi_size"]
    graph = source
    if source.suffix == ".ts":
        graph = built / "network.onnx"
        _onnx_from_torchscript(source, graph, roi[::-1])
    _permuted_onnx(graph, built / "1" / "model.onnx")
    if graph != source:
        graph.unlink()
    _check_converted(source, built / "1" / "model.onnx", roi, mapping.settings["output_channels"])
    (built / "interface.json").write_text(json.dumps(interface, indent=2) + "\n")
    (built / "config.pbtxt").write_text(config(interface, "python"))
    shutil.copyfile(SHARED_MODEL_PY, built / "1" / "model.py")


def default_name(bundle: Path) -> str:
    """A pipeline name from the bundle's folder: lower case, other characters as ``-``."""
    return re.sub(r"[^a-z0-9._-]+", "-", Path(bundle).resolve().name.lower()).strip("-._") or "bundle"


def definition_for(name: str, model: str, mapping: Mapping, metadata: dict[str, Any], bundle: Path) -> dict[str, Any]:
    """The pipeline definition of an imported bundle (a mapping ready for YAML)."""
    title = metadata.get("name") or bundle.name
    version = metadata.get("version")
    return {
        "name": name,
        "description": f"MONAI bundle {title}{f' {version}' if version else ''}: CT → "
                       f"{'×'.join(map(str, mapping.settings['roi_size']))} sliding window on Triton "
                       f"({model}) → label .mhd + publish folder",
        "parameters": {
            "overlap": {"type": "number", "default": mapping.overlap, "minimum": 0, "maximum": 0.9,
                        "description": "the windows' overlap, a fraction (the bundle's by default)"},
            "sw_batch_size": {"type": "integer", "default": mapping.sw_batch_size, "minimum": 1,
                              "maximum": max(MAX_BATCH_SIZE, mapping.sw_batch_size),
                              "description": "windows per inference request (the bundle's by default)"},
            "model": {"type": "string", "default": model, "pattern": "[A-Za-z0-9_-]+",
                      "explain": "a Triton model name", "description": "the Triton model"},
        },
        "settings": mapping.settings,
        "stages": [{"kind": "carina.segmentation.read_volume", "queue": "io"},
                   {"kind": "carina.segmentation.infer", "queue": "gpu"},
                   {"kind": "carina.segmentation.write_results", "queue": "io"}],
    }


def interface_for(model: str, mapping: Mapping, metadata: dict[str, Any]) -> dict[str, Any]:
    """The model's interface.json (the one source of its Triton configs)."""
    roi, channels = mapping.settings["roi_size"], mapping.settings["output_channels"]
    return {
        "name": model,
        "about": [f"Imported by carina import-bundle from the MONAI bundle {metadata.get('name', model)}: one",
                  f"channel of {'×'.join(map(str, roi))} (z, y, x) windows in, {channels} channels of logits out,",
                  "batch first; the network's own (x, y, z) order is transposed inside the graph."],
        "max_batch_size": max(MAX_BATCH_SIZE, mapping.sw_batch_size),
        "inputs": [{"name": INPUT, "data_type": "TYPE_FP32", "dims": [1, *roi]}],
        "outputs": [{"name": OUTPUT, "data_type": "TYPE_FP32", "dims": [channels, *roi]}],
        "max_queue_delay_microseconds": 2000,
    }


def import_bundle(bundle: Path, pipelines_dir: Path, models_dir: Path = MODEL_REPOSITORY,
                  name: str | None = None, known_pipelines: set[str] | frozenset[str] = frozenset()) -> Imported:
    """Import a MONAI bundle: a model folder in ``models_dir`` and a definition in ``pipelines_dir``.

    Args:
        bundle: the bundle's folder.
        pipelines_dir: where the definition goes (``CARINA_PIPELINES_DIR``).
        models_dir: the Triton model repository (the project's ``models/`` by default).
        name: the pipeline's name (the bundle folder's by default); the model's is the same
            with ``_`` for every other character than letters, digits, ``_`` and ``-``.
        known_pipelines: names already in the catalogue, refused.

    Returns: what was written, and the report of what became of each part of the recipe.

    Raises:
        BundleError: as :func:`read_bundle`; the name is taken (a pipeline, a model folder or a
            definition file); the model cannot be converted or differs from the bundle's.
            Nothing is written then.
    """
    bundle, pipelines_dir, models_dir = Path(bundle), Path(pipelines_dir), Path(models_dir)
    name = name or default_name(bundle)
    if not NAME_PATTERN.fullmatch(name):
        raise BundleError(f"--name {name!r}: lower-case letters, digits, '.', '_' and '-', a letter or digit first")
    model = re.sub(r"[^A-Za-z0-9_-]", "_", name)
    mapping, metadata = read_bundle(bundle)
    source = model_file(bundle)
    definition_path, model_folder = pipelines_dir / f"{name}.yaml", models_dir / model
    for taken, what in ((name in known_pipelines, f"a pipeline named {name!r} exists"),
                        (model_folder.exists(), f"{model_folder} exists"),
                        (definition_path.exists(), f"{definition_path} exists")):
        if taken:
            raise BundleError(f"{bundle}: {what}; choose another --name")
    for folder in (pipelines_dir, models_dir):
        if not folder.is_dir():
            raise BundleError(f"{folder}: not a folder")
    definition = definition_for(name, model, mapping, metadata, bundle)
    parse_definition(definition, str(definition_path), stage_kinds(), f"folder {pipelines_dir}")
    interface = interface_for(model, mapping, metadata)
    config = runpy.run_path(str(MODEL_REPOSITORY / "triton_configs.py"))["config"]  # no bytecode left in models/

    # Built beside the repository, not in it (Triton takes every folder there for a model), then renamed in.
    try:
        staging = Path(tempfile.mkdtemp(prefix=".carina-import-", dir=models_dir.parent))
        try:
            _build_model(source, staging / model, interface, mapping, config)
            if not (models_dir / BACKEND_FILE).exists():
                shutil.copyfile(MODEL_REPOSITORY / BACKEND_FILE, models_dir / BACKEND_FILE)
            header = (f"# Imported by carina import-bundle from {bundle.resolve()}.\n"
                      + "".join(f"#   {line}\n" for line in mapping.report))
            # Not a definition's suffix until renamed: a catalogue read meanwhile sees nothing of it.
            staged_definition = pipelines_dir / f".{definition_path.name}.importing"
            staged_definition.write_text(header + yaml.safe_dump(definition, sort_keys=False, allow_unicode=True,
                                                                default_flow_style=None, width=100))
            os.rename(staging / model, model_folder)
            os.replace(staged_definition, definition_path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            (pipelines_dir / f".{definition_path.name}.importing").unlink(missing_ok=True)
    except OSError as e:
        if model_folder.exists() and not definition_path.exists():
            shutil.rmtree(model_folder, ignore_errors=True)
        raise BundleError(f"{e.filename or models_dir}: {e.strerror or e}") from None
    return Imported(name, model_folder, definition_path, mapping.report)
