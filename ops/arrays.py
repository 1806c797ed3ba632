"""numpy or cupy: which array module an op works with, and moving arrays between host and GPU.

cupy is optional. Nothing here imports it unless a GPU path is asked for, so a CPU-only
install (and the front doors) never load it.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


def is_cupy(array: Any) -> bool:
    """Whether ``array`` is a cupy array, decided without importing cupy."""
    return type(array).__module__.split(".")[0] == "cupy"


@lru_cache(maxsize=1)
def gpu_available() -> bool:
    """Whether cupy is installed and sees at least one CUDA device (checked once per process;
    a worker pinned with CUDA_VISIBLE_DEVICES sees its own device only)."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no cupy, no driver, no device: all mean "compute on the CPU"
        return False


def to_device(array: np.ndarray) -> Any:
    """A cupy copy of ``array`` on the current device. Raises ImportError without cupy."""
    import cupy

    return cupy.asarray(array)


def to_host(array: Any) -> np.ndarray:
    """``array`` as a numpy array: a copy from the device for cupy, the array itself for numpy."""
    return array.get() if is_cupy(array) else array


def array_module(array: Any) -> Any:
    """``cupy`` for a cupy array, else ``numpy``: the module whose functions take ``array``."""
    if is_cupy(array):
        import cupy

        return cupy
    return np


def ndimage_for(array: Any) -> Any:
    """``cupyx.scipy.ndimage`` for a cupy array, else ``scipy.ndimage`` (same functions, same
    arguments)."""
    if is_cupy(array):
        from cupyx.scipy import ndimage
    else:
        from scipy import ndimage
    return ndimage
