"""Denormal floats flushed to zero on every thread of torch's CPU pool, not only the caller's.

x86's flush-to-zero and denormals-are-zero bits (what `torch.set_flush_denormal` sets) live
in each thread's MXCSR register, and torch sets them on the calling thread alone. The
threads of torch's OpenMP pool copy the register of the thread that starts them, once: a
pool started before the flush keeps IEEE denormals for good, so with `train.update_threads`
> 1 an update could compute half of each product's rows with denormals and half without.

`set_flush_denormal(flag, threads)` runs `torch.set_flush_denormal(flag)` on each of the
first `threads` threads of that pool, through one OpenMP parallel region of the libgomp that
torch itself runs on (a region started by the same thread uses the same pool threads, in the
same order). `flushed_on_threads(threads)` checks, in one elementwise product split across
them, that every one of them flushes. Where torch does not run on libgomp (another OpenMP
runtime, a build without OpenMP), `set_flush_denormal` with more than one thread returns
False and the caller decides (the trainer refuses the config before any work).
"""

from __future__ import annotations

import ctypes
import functools
import struct

import torch

# at::parallel_for hands each thread at least this many elements of an elementwise op
# (at::internal::GRAIN_SIZE); the probe gives every thread many of them.
_TORCH_GRAIN_SIZE = 32768
# The bits of float32 1e-39, a denormal (the smallest normal is 1.2e-38), which a flushing
# thread reads as zero (DAZ) and computes to zero (FTZ). Written as bits: converting the
# number 1e-39 to float32 on a flushing thread gives 0.
_DENORMAL_BITS = struct.unpack("<i", struct.pack("<f", 1e-39))[0]

_PARALLEL_BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@functools.cache
def _torch_libgomp() -> ctypes.CDLL | None:
    """The libgomp loaded into this process (torch's wheels bring their own), or None."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "libgomp" in line.split()[-1]}
    except OSError:
        return None
    if len(paths) != 1:  # none, or two runtimes: which pool torch uses is unknown
        return None
    library = ctypes.CDLL(paths.pop())
    library.GOMP_parallel.argtypes = [_PARALLEL_BODY, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    library.GOMP_parallel.restype = None
    return library


def set_flush_denormal(flag: bool, threads: int) -> bool:
    """`torch.set_flush_denormal(flag)` on this thread and, with `threads` > 1, on the other
    `threads - 1` threads of torch's pool; False where those could not be reached (only
    this thread was set)."""
    if not torch.set_flush_denormal(flag):  # no FTZ/DAZ on this CPU
        return False
    if threads <= 1:
        return True
    library = _torch_libgomp()
    if library is None:
        return False
    reached = []

    # Runs on each thread of the region (this one included); ctypes takes the GIL for it.
    @_PARALLEL_BODY
    def body(_):
        reached.append(torch.set_flush_denormal(flag))

    library.GOMP_parallel(body, None, threads, 0)
    return len(reached) == threads and all(reached)


def flushed_on_threads(threads: int) -> bool:
    """Whether all of `threads` torch threads flush denormals: a product of denormals,
    split by torch across them, comes out all zeros."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        size = 64 * _TORCH_GRAIN_SIZE * threads
        denormals = torch.full((size,), _DENORMAL_BITS, dtype=torch.int32).view(torch.float32)
        products = denormals * 1.0
        # Read as integers: a float comparison on a flushing thread would see a denormal
        # as zero too.
        return not bool(torch.any(products.view(torch.int32)))
    finally:
        torch.set_num_threads(previous)
