"""Settings of the whole process, made once at start-up by the CLI or a worker."""

from __future__ import annotations

import ctypes

M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Have glibc share `arenas` heaps between all threads instead of up to 8 per core.

    Dozens of copying threads allocate and free stream buffers of up to
    `migrator.registry.stream.PIECE`; with a heap per thread, the free space of one heap cannot
    serve another and stays resident. Measured on many-small (`migrator sync`, 35 threads):
    67 MiB peak RSS, 58 MiB with two arenas, the same CPU (the GIL already serialises the
    allocations). Call before the threads start; False where the C library has no `mallopt`
    (musl, macOS).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_ARENA_MAX, arenas))
