"""Host allocator setting that makes XLA:CPU train steps markedly faster.

Why: every train step on XLA:CPU allocates fresh multi-MB buffers (the
reference model's full-resolution conv maps are 68 MB at batch 32). glibc's
malloc serves each block above its mmap threshold with a new ``mmap`` and
unmaps it on ``free``, so each step page-faults gigabytes of fresh zeroed
pages; that, not arithmetic, was about a third of the step (measured with
benchmarks/bench_train_step.py; numbers in benchmarks/README.md). Serving
big blocks from one heap that is never trimmed reuses pages that are already
mapped. The cost: the process keeps its peak memory instead of handing freed
memory back to the OS, which a training or inference process does not miss.

The same can be had without this module by starting Python with
``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647:glibc.malloc.arena_max=1``;
``mallopt`` does it from inside the process. Off glibc (macOS, musl) nothing
happens. ``config.keep_host_memory=False`` leaves the allocator alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys

from absl import logging

# From glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2**31 - 1


@functools.lru_cache(maxsize=1)
def keep_freed_memory() -> bool:
  """Asks glibc malloc to keep freed memory mapped; True if it agreed.

  Process-wide and idempotent (cached). Call it before JAX starts its backend
  (``modes.dispatch.run`` does): threads that already hold a malloc arena of their own
  keep it, and a probe measured a slower step when the call came after
  (benchmarks/README.md).
  """
  if not sys.platform.startswith('linux'):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
  mallopt.restype = ctypes.c_int
  # One arena: threads would otherwise each grow their own heaps, which
  # glibc caps at 64 MB and so cannot hold the big buffers without mmap.
  settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM))
  ok = all(mallopt(param, value) == 1 for param, value in settings)
  if ok:
    logging.info('glibc malloc: big host buffers come from a heap that is kept mapped '
                 '(config.keep_host_memory).')
  return ok
