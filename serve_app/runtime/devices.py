"""Whether a GPU is really usable, asked of the CUDA driver itself.

onnxruntime-gpu lists the CUDA provider even where no GPU is present, and asking
for it there logs an error per session; the driver tells the truth quietly.
"""

from __future__ import annotations

import ctypes
import functools


@functools.cache
def cuda_device_count() -> int:
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    if driver.cuInit(0) != 0:
        return 0
    count = ctypes.c_int(0)
    if driver.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def wants_gpu(device: str, num_gpus: float) -> bool:
    """'auto' means the GPU when the replica reserved one; 'cuda' asks for it regardless."""
    return device == "cuda" or (device == "auto" and num_gpus > 0)
