"""Decode (and optionally featurise) every song once into memory-mapped .npy files.

Layout of ``cache_dir/<hash>/`` (the hash covers the audio/feature config, the
source and the song list with file sizes and mtimes, so any change rebuilds):

  inputs.npy      [N, segment_samples] or [N, frames, n_mels] float32
  song_index.npy  [N] int32: row -> position in songs.json
  songs.json      usable songs in cache order, with their first row and count
  summary.json    what was read, what was skipped and why
  views/          per-split row subsets (see ``materialize_rows``)

A cache is built in a temporary sibling folder and renamed into place at the
end, so a crash never leaves a half cache that a later run takes as complete.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import struct
import time
from typing import Any, Iterator, Sequence
import uuid

from absl import logging
import ml_collections
import numpy as np

from melgenre_jax.data import audio
from melgenre_jax.data.songs import Song
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime.processes import pid_alive

CACHE_VERSION = 1
_HEADER_BYTES = 256  # reserved .npy header, so rows can stream in before N is known
_MAX_VIEWS = 12  # split views kept per cache (least recently used pruned)


@dataclasses.dataclass
class Cache:
  """A complete cache, opened read-only."""
  path: str
  inputs: np.ndarray  # memmap [N, ...] float32
  song_index: np.ndarray  # [N] int32, index into ``songs``
  songs: list[Song]  # usable songs, cache order
  first_row: np.ndarray  # [len(songs)] int64
  num_rows: np.ndarray  # [len(songs)] int64
  summary: dict[str, Any]
  reused: bool


@dataclasses.dataclass(frozen=True)
class DecodeParams:
  """Everything a worker needs to turn a Song into rows (picklable)."""
  spec: InputSpec  # the input format: lengths in samples, waves or log-mels
  skip_silent: bool
  silence_db: float
  synthetic_seconds: float


def decode_params(config: ml_collections.ConfigDict) -> DecodeParams:
  return DecodeParams(spec=InputSpec.from_config(config),
                      skip_silent=bool(config.data.skip_silent), silence_db=-60.0,
                      synthetic_seconds=float(config.data.synthetic.song_seconds))


def _file_stamp(path: str) -> list[int]:
  try:
    st = os.stat(path)
    return [int(st.st_size), int(st.st_mtime_ns)]
  except OSError:
    return [-1, -1]


def fingerprint(config: ml_collections.ConfigDict,
                songs: Sequence[Song]) -> dict[str, Any]:
  """What the cached arrays depend on (and nothing else, to avoid rebuilds)."""
  p = decode_params(config)
  fp: dict[str, Any] = {
      'version': CACHE_VERSION,
      'source': config.data.source,
      'sample_rate': p.spec.sample_rate,
      'segment_samples': p.spec.segment_samples,
      'hop_samples': p.spec.hop_samples,
      'min_samples': p.spec.min_samples,
      'skip_silent': p.skip_silent,
      'silence_db': p.silence_db,
      'where': p.spec.where,
  }
  if p.spec.host_feature_settings():
    fp['features'] = p.spec.host_feature_settings()
  if any(not s.path for s in songs):
    fp['synthetic_seconds'] = p.synthetic_seconds
  fp['songs'] = [[s.key, s.path] + (_file_stamp(s.path) if s.path else [])
                 for s in songs]
  return fp


def cache_hash(config: ml_collections.ConfigDict,
               songs: Sequence[Song]) -> str:
  blob = json.dumps(fingerprint(config, songs), sort_keys=True,
                    separators=(',', ':'), default=str)
  return hashlib.sha256(blob.encode('utf-8')).hexdigest()[:20]


# --------------------------------------------------------------- decoding


@dataclasses.dataclass
class SongResult:
  index: int
  rows: np.ndarray | None  # float32 [n, ...] when ok
  reason: str | None  # why the song was skipped
  num_samples: int = 0


def _song_wave(song: Song, p: DecodeParams) -> np.ndarray:
  if not song.path:
    from melgenre_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    return np.asarray(synthetic.synthesize_song(song.key, p.spec.sample_rate,
                                                p.synthetic_seconds),
                      dtype=np.float32)
  return audio.load_audio(song.path, p.spec.sample_rate)


def decode_song(index: int, song: Song, p: DecodeParams) -> SongResult:
  """Song -> segment rows, or the reason it cannot be used (runs in workers)."""
  where = song.path or song.key
  try:
    wave = _song_wave(song, p)
    segments = audio.segment_audio(wave, p.spec.segment_samples, p.spec.hop_samples,
                                   p.spec.min_samples, path=where)
    if p.skip_silent and all(audio.is_silent(s, p.silence_db)
                             for s in segments):
      raise audio.AudioError(
          where, f'silent: every segment is below {p.silence_db:g} dBFS '
          '(config.data.skip_silent)')
    rows = p.spec.host_inputs(segments)
    return SongResult(index, np.ascontiguousarray(rows, np.float32), None,
                      int(wave.shape[0]))
  except audio.AudioError as e:
    return SongResult(index, None, e.reason)
  except Exception as e:  # pylint: disable=broad-except
    # Keep a long build alive: a decoder crash on one file is a bad file.
    return SongResult(index, None, f'failed to decode: {type(e).__name__}: {e}')


def _decode_task(args: tuple[int, Song, DecodeParams]) -> SongResult:
  return decode_song(*args)


def _decode_all(songs: Sequence[Song], p: DecodeParams, workers: int,
                progress: bool) -> Iterator[SongResult]:
  """Yields results in song order; ``workers`` spawn-started processes."""
  from tqdm import auto as tqdm  # pylint: disable=g-import-not-at-top
  bar = tqdm.tqdm(total=len(songs), desc='decoding songs', unit='song',
                  disable=not progress, leave=False)
  try:
    if workers <= 0:
      for i, s in enumerate(songs):
        yield decode_song(i, s, p)
        bar.update(1)
      return
    ctx = multiprocessing.get_context('spawn')  # safe with JAX threads
    window = 4 * workers
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx) as ex:
      pending: collections.deque = collections.deque()
      it = iter(enumerate(songs))
      for i, s in it:
        pending.append(ex.submit(_decode_task, (i, s, p)))
        if len(pending) >= window:
          break
      while pending:
        try:
          result = pending.popleft().result()
        except concurrent.futures.process.BrokenProcessPool as e:
          raise RuntimeError(
              'a cache worker process died: out of memory (lower '
              'config.data.cache_workers), or the main script lacks the '
              "`if __name__ == '__main__':` guard that spawned workers need"
              ) from e
        nxt = next(it, None)
        if nxt is not None:
          pending.append(ex.submit(_decode_task, (nxt[0], nxt[1], p)))
        yield result
        bar.update(1)
  finally:
    bar.close()


# ----------------------------------------------------------- npy streaming


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
  d = {'descr': np.lib.format.dtype_to_descr(np.dtype(dtype)),
       'fortran_order': False, 'shape': tuple(int(x) for x in shape)}
  body = repr(d).encode('latin1')
  pad = _HEADER_BYTES - 10 - len(body) - 1
  if pad < 0:
    raise ValueError(f'shape {shape} too large for the npy header')
  body += b' ' * pad + b'\n'
  return b'\x93NUMPY\x01\x00' + struct.pack('<H', len(body)) + body


class _RowWriter:
  """Appends float32 rows to a .npy whose length is fixed up at close()."""

  def __init__(self, path: str):
    self._f = open(path, 'wb')
    self._f.write(b'\0' * _HEADER_BYTES)
    self.rows = 0
    self.row_shape: tuple[int, ...] | None = None

  def append(self, rows: np.ndarray):
    if self.row_shape is None:
      self.row_shape = tuple(rows.shape[1:])
    elif tuple(rows.shape[1:]) != self.row_shape:
      raise ValueError(f'row shape {rows.shape[1:]} != {self.row_shape}')
    self._f.write(np.ascontiguousarray(rows, '<f4').tobytes())
    self.rows += rows.shape[0]

  def close(self):
    self._f.seek(0)
    self._f.write(_npy_header((self.rows, *(self.row_shape or (0,))),
                              np.float32))
    self._f.flush()
    os.fsync(self._f.fileno())
    self._f.close()


def _write_json(path: str, obj: Any):
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1, ensure_ascii=False, default=str)
  os.replace(tmp, path)


def _save_npy_atomic(path: str, arr: np.ndarray):
  tmp = f'{path}.tmp-{uuid.uuid4().hex[:8]}.npy'
  np.save(tmp, arr)
  os.replace(tmp, path)


# ------------------------------------------------------------------ build


def _tmp_prefix(key: str) -> str:
  return f'.tmp-{key}-{socket.gethostname()}-'


def _cleanup_stale_tmp(cache_dir: str):
  """Removes temp build folders of crashed builds on this host."""
  host = socket.gethostname()
  for name in os.listdir(cache_dir):
    if not name.startswith('.tmp-'):
      continue
    parts = name.split('-')
    # .tmp-<key>-<host...>-<pid>-<rand>
    try:
      pid = int(parts[-2])
    except (ValueError, IndexError):
      continue
    if f'-{host}-' in name and not pid_alive(pid):
      shutil.rmtree(os.path.join(cache_dir, name), ignore_errors=True)


def _per_genre(songs: Sequence[Song], ok: Sequence[bool],
               rows: Sequence[int]) -> dict[str, dict[str, int]]:
  out: dict[str, dict[str, int]] = {}
  for s, good, n in zip(songs, ok, rows):
    g = out.setdefault(s.genre, {'songs': 0, 'good': 0, 'bad': 0,
                                 'segments': 0})
    g['songs'] += 1
    g['good' if good else 'bad'] += 1
    g['segments'] += n
  return dict(sorted(out.items()))


def _build(config: ml_collections.ConfigDict, songs: Sequence[Song],
           target: str, key: str, progress: bool) -> None:
  """Decodes ``songs`` into a temp folder and renames it to ``target``."""
  p = decode_params(config)
  cache_dir = os.path.dirname(target)
  tmp = os.path.join(cache_dir,
                     f'{_tmp_prefix(key)}{os.getpid()}-{uuid.uuid4().hex[:6]}')
  os.makedirs(tmp)
  start = time.time()
  try:
    writer = _RowWriter(os.path.join(tmp, 'inputs.npy'))
    song_index: list[np.ndarray] = []
    good_meta, bad = [], []
    ok, counts = [], []
    for r in _decode_all(songs, p, int(config.data.cache_workers), progress):
      s = songs[r.index]
      if r.rows is None:
        logging.warning('skipping %s: %s', s.path or s.key, r.reason)
        bad.append({'key': s.key, 'path': s.path, 'genre': s.genre,
                    'reason': r.reason})
        ok.append(False)
        counts.append(0)
        continue
      n = int(r.rows.shape[0])
      good_meta.append({'key': s.key, 'first': writer.rows, 'count': n,
                        'seconds': p.spec.seconds(r.num_samples)})
      song_index.append(np.full(n, len(good_meta) - 1, np.int32))
      writer.append(r.rows)
      ok.append(True)
      counts.append(n)
    writer.close()
    idx = (np.concatenate(song_index) if song_index
           else np.zeros(0, np.int32))
    np.save(os.path.join(tmp, 'song_index.npy'), idx)
    _write_json(os.path.join(tmp, 'songs.json'), good_meta)
    summary = {
        'cache_version': CACHE_VERSION,
        'hash': key,
        'source': config.data.source,
        'where': p.spec.where,
        'row_shape': list(writer.row_shape or []),
        'num_songs': len(songs),
        'num_good': len(good_meta),
        'num_bad': len(bad),
        'num_segments': int(writer.rows),
        'bad_files': bad,
        'per_genre': _per_genre(songs, ok, counts),
        'build_seconds': round(time.time() - start, 2),
        'built_at': time.strftime('%Y-%m-%d %H:%M:%S'),
        'fingerprint': {k: v for k, v in fingerprint(config, songs).items()
                        if k != 'songs'},
    }
    _write_json(os.path.join(tmp, 'summary.json'), summary)
    try:
      os.rename(tmp, target)
    except OSError:
      if not os.path.isdir(target):
        raise
      logging.info('cache %s was completed concurrently; using it', target)
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  logging.info('built cache %s: %d/%d songs, %d segments in %.1f s', target,
               summary['num_good'], len(songs), summary['num_segments'],
               summary['build_seconds'])


def _open(target: str, songs: Sequence[Song], reused: bool) -> Cache:
  with open(os.path.join(target, 'summary.json'), encoding='utf-8') as f:
    summary = json.load(f)
  with open(os.path.join(target, 'songs.json'), encoding='utf-8') as f:
    meta = json.load(f)
  by_key = {s.key: s for s in songs}
  try:
    good = [by_key[m['key']] for m in meta]
  except KeyError as e:
    raise RuntimeError(f'cache {target} does not match the song list; delete '
                       'it and rerun') from e
  inputs = np.load(os.path.join(target, 'inputs.npy'), mmap_mode='r')
  song_index = np.load(os.path.join(target, 'song_index.npy'))
  if inputs.shape[0] != song_index.shape[0]:
    raise RuntimeError(f'cache {target} is inconsistent; delete it and rerun')
  return Cache(path=target, inputs=inputs, song_index=song_index, songs=good,
               first_row=np.array([m['first'] for m in meta], np.int64),
               num_rows=np.array([m['count'] for m in meta], np.int64),
               summary=summary, reused=reused)


def build_or_load(config: ml_collections.ConfigDict, songs: Sequence[Song],
                  cache_dir: str, *, progress: bool = True) -> Cache:
  """The cache for (config, songs): reused when complete, else built."""
  key = cache_hash(config, songs)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  os.makedirs(cache_dir, exist_ok=True)
  target = os.path.join(cache_dir, key)
  if os.path.isdir(target):
    logging.info('reusing cache %s', target)
    return _open(target, songs, reused=True)
  _cleanup_stale_tmp(cache_dir)
  logging.info('building cache %s for %d songs (%d workers)', target,
               len(songs), config.data.cache_workers)
  _build(config, songs, target, key, progress)
  return _open(target, songs, reused=False)


# ------------------------------------------------------------- split views


def materialize_rows(cache: Cache, rows: np.ndarray) -> np.ndarray:
  """A read-only memmap holding ``cache.inputs[rows]`` (sorted rows).

  A split is a subset of songs scattered through the cache; copying its rows
  once into their own .npy gives each split a plain memory-mapped array.
  Views are keyed by the row list, reused, and the least recently used are
  pruned beyond ``_MAX_VIEWS``.
  """
  rows = np.asarray(rows, np.int64)
  n_total = cache.inputs.shape[0]
  if rows.shape[0] == n_total and np.array_equal(rows, np.arange(n_total)):
    return cache.inputs
  digest = hashlib.sha256(rows.tobytes()).hexdigest()[:20]
  views = os.path.join(cache.path, 'views')
  path = os.path.join(views, f'{digest}.npy')
  try:
    view = np.load(path, mmap_mode='r')
    try:
      os.utime(path)  # mark as recently used
    except OSError:
      pass
    return view
  except FileNotFoundError:
    pass
  os.makedirs(views, exist_ok=True)
  tmp = f'{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}.npy'
  try:
    out = np.lib.format.open_memmap(
        tmp, mode='w+', dtype=np.float32,
        shape=(rows.shape[0], *cache.inputs.shape[1:]))
    chunk = max(1, (64 << 20) // max(1, out[0:1].nbytes))  # ~64 MiB
    for i in range(0, rows.shape[0], chunk):
      out[i:i + chunk] = cache.inputs[rows[i:i + chunk]]
    out.flush()
    del out
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  view = np.load(path, mmap_mode='r')
  _prune_views(views)
  return view


def _prune_views(views: str):
  files = [os.path.join(views, f) for f in os.listdir(views)
           if f.endswith('.npy') and '.tmp-' not in f]
  files.sort(key=lambda f: os.path.getmtime(f), reverse=True)
  for f in files[_MAX_VIEWS:]:
    try:
      os.remove(f)  # open memmaps elsewhere keep their (unlinked) data
    except OSError:
      pass
