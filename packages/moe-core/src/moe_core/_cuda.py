"""The CUDA driver calls moe needs beside MLX: pinned host memory, a copy stream of its own, and
copies between host memory and MLX's own arrays. Imported only on the CUDA backend.

MLX's CUDA backend allocates managed memory in the device's primary context; this module binds
the same context (per thread), so an evaluated MLX array's address is a valid copy target. Copies
from pinned memory on a stream of our own, one stream sync per batch, moved expert bytes into
slot tensors at 45.6 GB/s on an H200 against 1.67 GB/s through `mx.array` and a scatter
(benchmarks/speed_gpu.py measures it again on each run).
"""

from __future__ import annotations

import ctypes
import threading
import weakref

import mlx.core as mx
import numpy as np

_HOST_ALLOC_PORTABLE = 0x01


class CUDAError(RuntimeError):
    pass


class Driver:
    """libcuda through ctypes: the primary context MLX uses, pinned memory, async copies."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL("libcuda.so.1")
        except OSError as e:
            raise CUDAError(f"cannot load the CUDA driver (libcuda.so.1): {e}") from None
        c_void_p, c_size_t, c_uint64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint64
        lib.cuMemcpyHtoDAsync_v2.argtypes = [c_uint64, c_void_p, c_size_t, c_void_p]
        lib.cuMemcpyDtoHAsync_v2.argtypes = [c_void_p, c_uint64, c_size_t, c_void_p]
        lib.cuMemHostAlloc.argtypes = [ctypes.POINTER(c_void_p), c_size_t, ctypes.c_uint]
        lib.cuMemFreeHost.argtypes = [c_void_p]
        lib.cuStreamCreate.argtypes = [ctypes.POINTER(c_void_p), ctypes.c_uint]
        lib.cuStreamSynchronize.argtypes = [c_void_p]
        lib.cuCtxSetCurrent.argtypes = [c_void_p]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(c_void_p), ctypes.c_int]
        self._lib = lib
        self._check(lib.cuInit(0), "cuInit")
        device = ctypes.c_int()
        self._check(lib.cuDeviceGet(ctypes.byref(device), 0), "cuDeviceGet")
        self._ctx = c_void_p()
        self._check(
            lib.cuDevicePrimaryCtxRetain(ctypes.byref(self._ctx), device),
            "cuDevicePrimaryCtxRetain",
        )
        self._bound = threading.local()
        self.bind()

    def _check(self, result: int, what: str) -> None:
        if result != 0:
            name = ctypes.c_char_p()
            self._lib.cuGetErrorName(result, ctypes.byref(name))
            raise CUDAError(f"{what} failed: {(name.value or b'?').decode()} ({result})")

    def bind(self) -> None:
        """Make MLX's context current on this thread (once per thread)."""
        if not getattr(self._bound, "done", False):
            self._check(self._lib.cuCtxSetCurrent(self._ctx), "cuCtxSetCurrent")
            self._bound.done = True

    def pinned(self, nbytes: int) -> np.ndarray:
        """`nbytes` of page-locked host memory as a uint8 array, freed with the array."""
        self.bind()
        ptr = ctypes.c_void_p()
        self._check(
            self._lib.cuMemHostAlloc(ctypes.byref(ptr), nbytes, _HOST_ALLOC_PORTABLE),
            f"cuMemHostAlloc of {nbytes} bytes",
        )
        address = ptr.value
        assert address is not None  # cuMemHostAlloc succeeded
        raw = (ctypes.c_uint8 * nbytes).from_address(address)
        weakref.finalize(raw, self._lib.cuMemFreeHost, address)
        return np.ctypeslib.as_array(raw)  # keeps `raw` (and so the memory) alive

    def stream(self) -> ctypes.c_void_p:
        self.bind()
        stream = ctypes.c_void_p()
        self._check(self._lib.cuStreamCreate(ctypes.byref(stream), 1), "cuStreamCreate")
        return stream

    def to_device(self, dst: int, src: int, nbytes: int, stream: ctypes.c_void_p) -> None:
        self._check(self._lib.cuMemcpyHtoDAsync_v2(dst, src, nbytes, stream), "cuMemcpyHtoDAsync")

    def to_host(self, dst: int, src: int, nbytes: int, stream: ctypes.c_void_p) -> None:
        self._check(self._lib.cuMemcpyDtoHAsync_v2(dst, src, nbytes, stream), "cuMemcpyDtoHAsync")

    def sync(self, stream: ctypes.c_void_p) -> None:
        self._check(self._lib.cuStreamSynchronize(stream), "cuStreamSynchronize")


_driver: Driver | None = None
_lock = threading.Lock()


def driver() -> Driver:
    """The process's one driver binding."""
    global _driver
    with _lock:
        if _driver is None:
            _driver = Driver()
        return _driver


def address(array: mx.array) -> int:
    """The device address of an evaluated, contiguous MLX array (managed memory: the host sees
    the same address)."""
    mx.eval(array)
    viewed = array.view(mx.uint16) if array.dtype == mx.bfloat16 else array
    mx.eval(viewed)
    return int(np.array(viewed, copy=False).__array_interface__["data"][0])


class CUDAUploader:
    """Copies between pinned host rows and one bank's slot tensors on a stream of our own: each
    copy is queued as it is asked for, `flush` waits for the stream once."""

    __slots__ = ("base", "driver", "nbytes", "stream")

    def __init__(self, arrays: list[mx.array], stream: ctypes.c_void_p | None = None) -> None:
        self.driver = driver()
        self.stream = stream if stream is not None else shared_stream()
        self.base = [address(a) for a in arrays]
        self.nbytes = [a.nbytes // a.shape[0] for a in arrays]

    def to_device(self, param: int, slot: int, src: np.ndarray) -> None:
        self.driver.bind()  # generation may run on another thread than the one that offloaded
        n = self.nbytes[param]
        if src.nbytes != n:
            raise ValueError(f"upload of {src.nbytes} bytes into a {n}-byte slot")
        self.driver.to_device(self.base[param] + slot * n, src.ctypes.data, n, self.stream)

    def to_host(self, param: int, slot: int, dst: np.ndarray) -> None:
        self.driver.bind()
        n = self.nbytes[param]
        self.driver.to_host(dst.ctypes.data, self.base[param] + slot * n, n, self.stream)

    def flush(self) -> None:
        self.driver.bind()
        self.driver.sync(self.stream)


_stream: ctypes.c_void_p | None = None


def shared_stream() -> ctypes.c_void_p:
    """One copy stream for the process: every layer's uploads go through it in order."""
    global _stream
    binding = driver()  # outside the lock: driver() takes it too (it is not reentrant)
    with _lock:
        if _stream is None:
            _stream = binding.stream()
        return _stream


def check_uploads(array: mx.array, uploader: CUDAUploader, row: np.ndarray, *, param: int) -> None:
    """Copy `row` into slot 0 of `array` (the uploader's param `param`) and read it back through
    MLX: the address MLX gave is the memory it computes on. Raises if not."""
    uploader.to_device(param, 0, row)
    uploader.flush()
    viewed = array[0].view(mx.uint16) if array.dtype == mx.bfloat16 else array[0]
    got = np.array(viewed).reshape(-1).view(np.uint8)
    if not np.array_equal(got, row):
        raise CUDAError("bytes copied into an MLX array did not arrive: the upload path is broken")
    uploader.to_device(param, 0, np.zeros_like(row))
    uploader.flush()
