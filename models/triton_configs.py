"""Each model's Triton configuration, for each kind of server, from one source: the model's
``interface.json`` (its tensors, batch size and batching delay).

- ``python``: the local wheel-based server (``carina triton``), whose build has no ONNX Runtime
  backend: the python backend runs ``1/model.py``, onnxruntime inside (``onnx_backend.py``).
  These are the ``config.pbtxt`` files committed beside each model.
- ``onnxruntime``: NGC's server (``docker/triton.Dockerfile``): Triton's native ONNX Runtime
  backend on the GPU, no Python in the request path.

    python models/triton_configs.py --check           # each config.pbtxt is what its interface makes
    python models/triton_configs.py --write           # make them again
    python models/triton_configs.py --onnxruntime OUT # a repository for NGC's server: configs + model.onnx

Standard library only: it runs in NGC's image at build time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

MODELS = Path(__file__).resolve().parent
BACKENDS = {
    "python": ('backend: "python"', "KIND_CPU", "model.py runs 1/model.onnx with onnxruntime (onnx_backend.py)."),
    "onnxruntime": ('platform: "onnxruntime_onnx"', "KIND_GPU", "Triton's ONNX Runtime backend runs 1/model.onnx."),
}


def interfaces() -> list[dict]:
    """Every model's interface, by model folder name."""
    return [json.loads(path.read_text()) for path in sorted(MODELS.glob("*/interface.json"))]


def _tensors(kind: str, tensors: list[dict]) -> str:
    blocks = ",\n".join(f'  {{\n    name: "{t["name"]}"\n    data_type: {t["data_type"]}\n'
                        f'    dims: [ {", ".join(str(d) for d in t["dims"])} ]\n  }}' for t in tensors)
    return f"{kind} [\n{blocks}\n]\n"


def config(interface: dict, backend: str) -> str:
    """The ``config.pbtxt`` text of a model for ``backend`` (python, onnxruntime)."""
    line, instance, runs = BACKENDS[backend]
    about = "".join(f"# {text}\n" for text in [*interface["about"], runs])
    return (f"{about}# Made by models/triton_configs.py from interface.json: edit that, not this.\n"
            f'name: "{interface["name"]}"\n{line}\nmax_batch_size: {interface["max_batch_size"]}\n'
            + _tensors("input", interface["inputs"]) + _tensors("output", interface["outputs"])
            + f"dynamic_batching {{\n  max_queue_delay_microseconds: {interface['max_queue_delay_microseconds']}\n}}\n"
            + f"instance_group [\n  {{\n    kind: {instance}\n    count: 1\n  }}\n]\n")


def onnxruntime_repository(out: Path) -> None:
    """A model repository for NGC's server in ``out``: each model's config and its model.onnx."""
    for interface in interfaces():
        version = out / interface["name"] / "1"
        version.mkdir(parents=True, exist_ok=True)
        (out / interface["name"] / "config.pbtxt").write_text(config(interface, "onnxruntime"))
        shutil.copyfile(MODELS / interface["name"] / "1" / "model.onnx", version / "model.onnx")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed config.pbtxt differs")
    parser.add_argument("--write", action="store_true", help="write each model's config.pbtxt (python backend)")
    parser.add_argument("--onnxruntime", type=Path, metavar="OUT", help="write a repository for NGC's server")
    args = parser.parse_args()
    stale = []
    for interface in interfaces():
        path, text = MODELS / interface["name"] / "config.pbtxt", config(interface, "python")
        if args.write:
            path.write_text(text)
        elif args.check and path.read_text() != text:
            stale.append(str(path))
    if args.onnxruntime:
        onnxruntime_repository(args.onnxruntime)
    if stale:
        print(f"not what interface.json makes (python models/triton_configs.py --write): {', '.join(stale)}",
              file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
