"""config.keep_host_memory: glibc serves big host buffers from its heap, not fresh mmaps."""

import ctypes
import ctypes.util
import sys

import numpy as np
import pytest

from melgenre_jax.runtime import hostmem


class _MallInfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in
              ('arena', 'ordblks', 'smblks', 'hblks', 'hblkhd', 'usmblks', 'fsmblks',
               'uordblks', 'fordblks', 'keepcost')]


def _mallinfo2():
  libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6')
  if not hasattr(libc, 'mallinfo2'):
    pytest.skip('glibc without mallinfo2 (< 2.33)')
  libc.mallinfo2.restype = _MallInfo2
  return libc.mallinfo2


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc only')
def test_big_buffers_come_from_the_kept_heap():
  mallinfo2 = _mallinfo2()
  assert hostmem.keep_freed_memory()
  assert hostmem.keep_freed_memory()  # idempotent
  before = mallinfo2()
  x = np.ones(16 * 2**20, np.float32)  # 64 MiB: far above glibc's default mmap threshold
  during = mallinfo2()
  assert during.hblkhd - before.hblkhd < 2**20  # not one of malloc's mmapped blocks
  assert during.uordblks - before.uordblks >= x.nbytes  # but in the heap's used bytes
  del x
  after = mallinfo2()
  # Freed, and the heap kept the pages (nothing trimmed back to the OS). The
  # block may have reused free heap space from earlier tests, so compare with
  # the block's size, not with the free bytes before it.
  assert after.arena >= during.arena
  assert after.fordblks >= 16 * 2**20 * 4
