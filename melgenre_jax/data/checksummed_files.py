"""Cache files that prove their contents: streamed .npy writes, sizes, CRC-32s.

Each cache entry (a ``<hash>/`` folder, or one split view under its
``views/``) records in a manifest, when it is written, every file's size in
bytes and the CRC-32 of the bytes written. Opening compares them, so a
truncated file (a killed copy, a full disk) or bytes overwritten later are
found before any training or evaluation reads them, and the entry is moved
aside (never deleted) and rebuilt.

Manifest (``manifest.json`` written last, before the entry is renamed into
place; ``views/<digest>.json`` before the view is)::

  {"manifest_version": 1, "checksum": "crc32",
   "files": {"inputs.npy": {"bytes": 144256, "crc32": "9a0c3e1f"}, ...}}

Why CRC-32 (``zlib.crc32`` streamed in 8 MiB chunks): of the checksums the
standard library and numpy offer it was the fastest that still catches any
change, several GB/s on one core (numbers in benchmarks/README.md), so opening
a multi-GB cache costs about a second. Adler-32 was a little slower and weaker
on short inputs; SHA-1, MD5 and BLAKE2 were 2-5x slower (their tamper
resistance buys nothing against a full disk); a vectorised numpy sum was
faster still but misses reordered blocks and changes that cancel out, while
CRC-32 catches every burst up to 32 bits and anything else with odds
1 - 2^-32.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import struct
import time
from typing import Any, Iterator
import uuid
import zlib

from absl import logging
import numpy as np

from melgenre_jax.errors import DiskFullError
from melgenre_jax.runtime import atomic
from melgenre_jax.runtime import disk
from melgenre_jax.runtime import processes

MANIFEST = 'manifest.json'
MANIFEST_VERSION = 1
# Checksums are verified on every open for files up to this size (~1 s at the
# measured speed, from the page cache; GTZAN's raw-audio cache fits); larger
# ones get size checks only unless config.data.verify_cache=True.
VERIFY_BYTES = 4 << 30
_CHUNK = 8 << 20
_HEADER_BYTES = 256  # reserved .npy header, so rows can stream in before N is known

FileRecord = dict[str, Any]  # {'bytes': int, 'crc32': '%08x'}


class CacheDamaged(Exception):
  """An entry whose files do not match its manifest (the message says how)."""


# --------------------------------------------------------------- checksums


def _record(size: int, crc: int) -> FileRecord:
  return {'bytes': int(size), 'crc32': f'{crc & 0xffffffff:08x}'}


def _gf2_times(mat: list[int], vec: int) -> int:
  out, i = 0, 0
  while vec:
    if vec & 1:
      out ^= mat[i]
    vec >>= 1
    i += 1
  return out


def crc32_combine(crc1: int, crc2: int, len2: int) -> int:
  """CRC-32 of ``a + b`` from crc32(a), crc32(b) and len(b) (zlib's algorithm).

  zlib has it in C but Python does not expose it. The .npy header is only
  known once every row is written; this lets the file's checksum still be
  taken over the bytes as they are written, without reading them back.
  """
  if len2 <= 0:
    return crc1
  op = [0xedb88320] + [1 << n for n in range(31)]  # one zero bit
  for _ in range(2):
    op = [_gf2_times(op, v) for v in op]  # two, then four zero bits
  while len2:  # apply len2 zero bytes to crc1: square the operator per bit of len2
    op = [_gf2_times(op, v) for v in op]  # one zero byte, then 2, 4, 8 ...
    if len2 & 1:
      crc1 = _gf2_times(op, crc1)
    len2 >>= 1
  return (crc1 ^ crc2) & 0xffffffff


def crc32_file(path: str) -> int:
  """Streams the file through zlib.crc32 with one reused buffer."""
  buf = bytearray(_CHUNK)
  view = memoryview(buf)
  crc = 0
  with open(path, 'rb', buffering=0) as f:
    while n := f.readinto(buf):
      crc = zlib.crc32(view[:n], crc)
  return crc


# ------------------------------------------------------------------ writing


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
  """A version 1.0 .npy header padded to the fixed reserved length."""
  d = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
       'fortran_order': False, 'shape': tuple(int(x) for x in shape)}
  body = repr(d).encode('latin1')
  pad = _HEADER_BYTES - 10 - len(body) - 1
  if pad < 0:
    raise ValueError(f'shape {shape} too large for the npy header')
  body += b' ' * pad + b'\n'
  return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(body)) + body


class RowWriter:
  """Appends float32 rows to a .npy whose length is fixed up at close().

  Writes with write(), not a memory map: on a full disk a write into a mapped
  page kills the process with SIGBUS, while write() raises ENOSPC.
  """

  def __init__(self, path: str, row_shape: tuple[int, ...] | None = None):
    self.path = path
    self.rows = 0
    self.row_shape = None if row_shape is None else tuple(row_shape)
    self._crc = 0  # over the rows written, the header is combined at close
    self._data_bytes = 0
    self._f = open(path, 'wb')
    try:
      self._f.write(b'\0' * _HEADER_BYTES)
    except BaseException:
      self._f.close()
      raise

  def append(self, rows: np.ndarray):
    if self.row_shape is None:
      self.row_shape = tuple(rows.shape[1:])
    elif tuple(rows.shape[1:]) != self.row_shape:
      raise ValueError(f'row shape {rows.shape[1:]} != {self.row_shape}')
    data = np.ascontiguousarray(rows, '<f4')
    self._f.write(data)
    self._crc = zlib.crc32(data, self._crc)
    self._data_bytes += data.nbytes
    self.rows += rows.shape[0]

  def close(self) -> FileRecord:
    """Writes the header, syncs, and returns the file's size and CRC-32."""
    with self._f:
      header = npy_header((self.rows, *(self.row_shape or (0,))), np.float32)
      self._f.seek(0)
      self._f.write(header)
      self._f.flush()
      os.fsync(self._f.fileno())
    crc = crc32_combine(zlib.crc32(header), self._crc, self._data_bytes)
    return _record(_HEADER_BYTES + self._data_bytes, crc)

  def abort(self):
    """Closes the file after a failure (the caller removes it)."""
    with contextlib.suppress(OSError):
      self._f.close()


def write_bytes(path: str, data: bytes) -> FileRecord:
  """Writes ``path`` atomically and durably; returns its size and CRC-32."""
  atomic.write_bytes(path, data, unique=True)
  return _record(len(data), zlib.crc32(data))


def write_json(path: str, obj: Any) -> FileRecord:
  return write_bytes(path, json.dumps(obj, indent=1, ensure_ascii=False,
                                      default=str).encode('utf-8'))


def write_npy(path: str, arr: np.ndarray) -> FileRecord:
  header = npy_header(arr.shape, arr.dtype)
  return write_bytes(path, header + np.ascontiguousarray(arr).tobytes())


def rename_into_place(tmp: str, target: str):
  """Renames a finished temp folder to ``target``; a concurrent twin wins."""
  try:
    os.rename(tmp, target)
  except OSError:
    if not os.path.isdir(target):
      raise
    logging.info('cache %s was completed concurrently; using it', target)
    shutil.rmtree(tmp, ignore_errors=True)


def write_manifest(path: str, files: dict[str, FileRecord]) -> None:
  """The entry's manifest, written last: its presence means 'complete'."""
  write_json(path, {'manifest_version': MANIFEST_VERSION, 'checksum': 'crc32',
                    'files': files})


# ----------------------------------------------------------------- checking


def _read_manifest(path: str) -> dict[str, FileRecord]:
  name = os.path.basename(path)
  try:
    with open(path, encoding='utf-8') as f:
      manifest = json.load(f)
    if manifest.get('manifest_version') != MANIFEST_VERSION:
      raise ValueError(f'manifest_version {manifest.get("manifest_version")}')
    files = manifest['files']
    if not files:
      raise ValueError('no files listed')
    for rec in files.values():
      int(rec['bytes']), int(rec['crc32'], 16)  # pylint: disable=expression-not-assigned
    return files
  except FileNotFoundError:
    raise CacheDamaged(f'{name} is missing (an interrupted copy, or built '
                       'before sizes and checksums were recorded), so it '
                       'cannot be verified') from None
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    raise CacheDamaged(f'{name} is unreadable ({type(e).__name__}: {e})'
                       ) from None


def checksum_limit(always: bool) -> float:
  """Largest file whose checksum opening verifies (all with ``always``)."""
  return math.inf if always else VERIFY_BYTES


def verify(folder: str, manifest: str, checksum_up_to: float) -> None:
  """Raises CacheDamaged unless every file matches ``manifest`` in ``folder``.

  Sizes always (a stat each), first; then the checksum of each file of at most
  ``checksum_up_to`` bytes (VERIFY_BYTES by default, inf with
  config.data.verify_cache, -1 right after a build: those were just taken).
  """
  files = _read_manifest(os.path.join(folder, manifest))
  for name, rec in files.items():
    try:
      size = os.path.getsize(os.path.join(folder, name))
    except OSError:
      raise CacheDamaged(f'{name} is missing') from None
    if size != rec['bytes']:
      how = ('truncated: a killed copy or a full disk?' if size < rec['bytes']
             else 'it grew since')
      raise CacheDamaged(f'{name} has {size} bytes but {rec["bytes"]} were '
                         f'written ({how})')
  skipped = 0
  for name, rec in files.items():
    if rec['bytes'] > checksum_up_to:
      skipped += rec['bytes']
      continue
    crc = f'{crc32_file(os.path.join(folder, name)):08x}'
    if crc != rec['crc32']:
      raise CacheDamaged(f'{name}: CRC-32 {crc} differs from the {rec["crc32"]} '
                         'recorded when it was written (its bytes changed since)')
  if skipped and checksum_up_to >= 0:
    logging.info('%s: sizes checked; checksums of %.1f GB skipped (files over '
                 '%d GiB; --config.data.verify_cache=True checks them)', folder,
                 skipped / 1e9, VERIFY_BYTES >> 30)


def move_aside(paths: list[str], cache_dir: str, name: str,
               problem: str) -> str | None:
  """Moves damaged files to ``cache_dir/damaged/<name>.<time>``; warns.

  Kept, not deleted: the damage may be worth inspecting (which bytes, which
  disk). Returns the new place, or None when another process moved it first.
  """
  dest = os.path.join(cache_dir, 'damaged', f'{name}.{time.strftime("%Y%m%d-%H%M%S")}'
                      f'-{uuid.uuid4().hex[:4]}')
  try:
    if len(paths) == 1 and os.path.isdir(paths[0]):
      os.makedirs(os.path.dirname(dest), exist_ok=True)
      os.rename(paths[0], dest)
    else:
      os.makedirs(dest)
      for p in paths:
        with contextlib.suppress(FileNotFoundError):
          os.rename(p, os.path.join(dest, os.path.basename(p)))
  except FileNotFoundError:
    logging.info('damaged cache entry %s was already moved away', paths[0])
    return None
  logging.warning('damaged cache entry %s: %s. Moved it to %s (kept for '
                  'inspection, delete it when done); rebuilding it.', paths[0],
                  problem, dest)
  return dest


# --------------------------------------------------------------- disk full


@contextlib.contextmanager
def disk_full_is_user_error(what: str, where: str) -> Iterator[None]:
  """Turns ENOSPC/EDQUOT inside the block into DiskFullError naming ``where``.

  The caller's own cleanup runs first (it is inside the block), so the
  message can say that nothing partial was kept.
  """
  try:
    yield
  except DiskFullError:
    raise
  except OSError as e:
    if not disk.is_disk_full(e):
      raise
    free = f'{disk.free_space(where)} free once the partial files were removed'
    err = DiskFullError(
        f'disk full while writing {what} under {where} ({e.strerror}; {free}). '
        'Nothing partial was kept and caches already there are intact: free '
        'space on that disk or point --config.data.cache_dir at another one, '
        'then rerun')
    err.errno = e.errno
    raise err from e


# -------------------------------------------------------------- split views


def open_view(views: str, digest: str, shape: tuple[int, ...],
              checksum_up_to: float, damaged_name: str) -> np.ndarray | None:
  """The intact view ``views/<digest>.npy`` as a read-only memmap.

  None when it is absent, or damaged: then it and its manifest are moved to
  ``<cache_dir>/damaged/<damaged_name>.<time>/`` (cache_dir is two levels up).
  """
  path = os.path.join(views, f'{digest}.npy')
  if not os.path.exists(path):
    return None
  try:
    verify(views, f'{digest}.json', checksum_up_to)
    view = np.load(path, mmap_mode='r')
    if view.shape != tuple(shape) or view.dtype != np.float32:
      raise CacheDamaged(f'{view.shape} {view.dtype}, not {tuple(shape)} float32')
  except (CacheDamaged, ValueError) as e:
    move_aside([path, os.path.join(views, f'{digest}.json')],
               os.path.dirname(os.path.dirname(views)), damaged_name, str(e))
    return None
  with contextlib.suppress(OSError):
    os.utime(path)  # mark as recently used
  return view


def write_view(views: str, digest: str, source: np.ndarray, rows: np.ndarray):
  """Copies ``source[rows]`` to a temp file, writes its manifest, renames it in."""
  os.makedirs(views, exist_ok=True)
  processes.remove_orphaned_temp_files(views)  # of views whose writer was killed
  path = os.path.join(views, f'{digest}.npy')
  with atomic.replacing(path, suffix='.npy', unique=True) as tmp:
    writer = RowWriter(tmp, source.shape[1:])
    try:
      chunk = max(1, (64 << 20) // max(1, source[0:1].nbytes))  # ~64 MiB
      for i in range(0, rows.shape[0], chunk):
        writer.append(source[rows[i:i + chunk]])
      record = writer.close()
    except BaseException:
      writer.abort()
      raise
    write_manifest(os.path.join(views, f'{digest}.json'), {f'{digest}.npy': record})


def prune_views(views: str, keep: int):
  """Removes all but the ``keep`` most recently used views (and manifests)."""
  files = [os.path.join(views, f) for f in os.listdir(views)
           if f.endswith('.npy') and '.tmp-' not in f]
  files.sort(key=lambda f: os.path.getmtime(f), reverse=True)
  for f in files[keep:]:
    for name in (f, f[:-len('.npy')] + '.json'):
      with contextlib.suppress(OSError):
        os.remove(name)  # open memmaps elsewhere keep their (unlinked) data
