"""Where a runner runs: on the GPUs its replica was given, asked of the CUDA driver itself.

Ray's assignment is the one source of truth for GPUs: `instances.num_gpus` in config.yaml is only
the default reservation, which a Serve config (`ray_actor_options.num_gpus`) or a batch job
(`num_gpus_per_actor`) may replace. A replica given a GPU runs on CUDA, one given none on the CPU;
`runtime.device` can only pin the CPU or insist on CUDA.

onnxruntime-gpu lists the CUDA provider even where no GPU is present, and asking for it there logs
an error per session; the driver tells the truth quietly.
"""

from __future__ import annotations

import ctypes
import functools
import logging

from serve_app.errors import RepositoryError

logger = logging.getLogger("serve_app.runtime")


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


def cuda_driver_version() -> str | None:
    """The CUDA version the installed driver supports (e.g. '13.0'), or None without a driver."""
    try:
        driver = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int(0)
    if driver.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    return f"{version.value // 1000}.{version.value % 1000 // 10}"


def placement(model: str, device: str, gpus_given: int | None) -> str:
    """'cuda' or 'cpu' for a runner of `model`.

    gpus_given: how many GPUs Ray assigned to this replica or actor (`ray.get_gpu_ids()`); None
    outside Ray (a command-line tool), where the GPUs this process can see count as given.
    """
    if device == "cpu":
        return "cpu"
    given = cuda_device_count() if gpus_given is None else gpus_given
    if given > 0:
        return "cuda"
    if device == "cuda":
        where = "this process sees no CUDA device" if gpus_given is None else "this replica was given no GPU"
        raise RepositoryError(
            f"model '{model}': runtime.device is 'cuda' but {where}; reserve one (instances.num_gpus in "
            "config.yaml, or ray_actor_options.num_gpus / num_gpus_per_actor where a Serve config or batch "
            "job sets it) or set runtime.device to auto"
        )
    return "cpu"


def fall_back_to_cpu(model: str, device: str, problem: str) -> str:
    """A replica given a GPU it cannot use: runtime.device 'cuda' insists, so an error naming the
    setting; 'auto' gets one warning naming what is missing, then the CPU."""
    if device == "cuda":
        raise RepositoryError(f"model '{model}': runtime.device is 'cuda' but {problem}")
    logger.warning("model %s: given a GPU, but %s: running on the CPU instead", model, problem)
    return "cpu"


def cuda_libraries(cuda_major: int) -> dict[str, bool]:
    """Whether each library ONNX Runtime's CUDA provider loads for `cuda_major` can be loaded,
    by soname (after onnxruntime.preload_dlls, the wheels of the `cuda` extra count too)."""
    cufft = 12 if cuda_major >= 13 else 11
    names = [f"libcudart.so.{cuda_major}", f"libcublasLt.so.{cuda_major}", f"libcublas.so.{cuda_major}"]
    names += ["libcurand.so.10", f"libcufft.so.{cufft}", "libcudnn.so.9"]
    found = {}
    for name in names:
        try:
            ctypes.CDLL(name)
            found[name] = True
        except OSError:
            found[name] = False
    return found
