"""The peer of ``bench/wsi.py --peer tiatoolbox``: TIAToolbox's ``SemanticSegmentor`` (its Dask
and Zarr engine, 2.x) on a slide, with the project's ``nuclei_unet``: the ONNX file wrapped as
the torch module TIAToolbox expects (``ModelABC``), onnxruntime inside, the same threads.

It runs in an environment of its own (``make bench-peer``: ``.peer-venv`` from
``bench/peer-requirements.txt``; TIAToolbox pins a torch and a dask that the project's
environment does not take) and imports nothing of Carina's. Patches of 256 × 256 at level 0,
stride 256 (Carina's tiles, no margins), on the tissue TIAToolbox's own mask finds; its output is
the probability map (Zarr), as its engine writes it. The last line printed is one JSON object:
``patches``, ``seconds`` (the engine's run, the model loaded), ``peak_rss_mb``.

    .peer-venv/bin/python bench/peer_tiatoolbox.py --slide slide.tif --model models/nuclei_unet/1/model.onnx
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import numpy as np

TILE = 256
BATCH = 16  # Carina's batch of tiles per request
MPP = 0.25  # µm per pixel at level 0: a 40× scan


def onnx_module(model: Path, threads: int):
    """``model`` (uint8 NCHW RGB in, float32 N1HW nucleus probability out) as a TIAToolbox model."""
    import onnxruntime
    import torch
    from tiatoolbox.models.models_abc import ModelABC

    class OnnxNuclei(ModelABC):
        def __init__(self) -> None:
            super().__init__()
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = onnxruntime.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

        def probabilities(self, images_nhwc: np.ndarray) -> np.ndarray:
            """(N, H, W, 3) RGB → (N, H, W, 2) float32, background and nucleus, the layout TIAToolbox
            merges (its post-processing takes the argmax: a nucleus where p > 0.5, Carina's threshold)."""
            chw = np.ascontiguousarray(images_nhwc.astype(np.uint8, copy=False).transpose(0, 3, 1, 2))
            (probability,) = self.session.run(None, {"INPUT__0": chw})
            nucleus = probability.transpose(0, 2, 3, 1)
            return np.concatenate([1 - nucleus, nucleus], axis=3)

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(self.probabilities(images.numpy()))

        @staticmethod
        def postproc(image: np.ndarray) -> np.ndarray:
            """Probabilities (…, 2) → the class of each pixel: 1 for a nucleus (as TIAToolbox's UNet does)."""
            return image.argmax(axis=-1).astype(np.uint8)

        @staticmethod
        def infer_batch(model: OnnxNuclei, batch_data: torch.Tensor, *, device: str) -> np.ndarray:
            return model.probabilities(batch_data.numpy())

    return OnnxNuclei()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slide", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()

    import torch
    from tiatoolbox.models import IOSegmentorConfig, SemanticSegmentor
    from tiatoolbox.wsicore.wsireader import WSIReader

    torch.set_num_threads(args.threads)
    baseline = {"units": "baseline", "resolution": 1.0}
    ioconfig = IOSegmentorConfig(input_resolutions=[baseline], output_resolutions=[baseline],
                                 patch_input_shape=(TILE, TILE), patch_output_shape=(TILE, TILE),
                                 stride_shape=(TILE, TILE), save_resolution=baseline)
    segmentor = SemanticSegmentor(model=onnx_module(args.model, args.threads), batch_size=BATCH, num_workers=0,
                                  device="cpu", verbose=False)
    # The generated slide names no resolution; TIAToolbox's tissue mask is made at 6 µm per pixel.
    slide = WSIReader.open(args.slide, mpp=(MPP, MPP), power=40)
    start = time.perf_counter()
    output = segmentor.run([slide], patch_mode=False, ioconfig=ioconfig, save_dir=args.workdir / "tiatoolbox",
                           overwrite=True, output_type="zarr")
    seconds = time.perf_counter() - start
    patches = len(segmentor.output_locations) if segmentor.output_locations is not None else None
    print(json.dumps({"patches": patches, "seconds": seconds, "output": str(output),
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
    main()
