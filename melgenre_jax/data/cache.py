"""Decode (and optionally featurise) every song once into memory-mapped .npy files.

Layout of ``cache_dir/<hash>/`` (the hash covers the audio/feature config, the
source and the song list with file sizes and mtimes, so any change rebuilds):

  inputs.npy      [N, segment_samples] or [N, frames, n_mels] float32
  song_index.npy  [N] int32: row -> position in songs.json
  songs.json      usable songs in cache order, with their first row and count
  summary.json    what was read, what was skipped and why
  manifest.json   each file's size and CRC-32, written last (checksummed_files.py)
  views/          per-split row subsets, each <digest>.npy with its own
                  <digest>.json manifest (see ``materialize_rows``)

A cache is built in a temporary sibling folder and renamed into place at the
end, so a crash never leaves a half cache that a later run takes as complete.
Opening checks every file against its manifest (sizes always, checksums as
``checksummed_files.verify`` says), so a file damaged later (a truncated copy,
overwritten bytes) is not read: the entry is moved to ``cache_dir/damaged/``
with a warning and rebuilt.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import socket
import time
from typing import Any, Iterator, Sequence
import uuid

from absl import logging
import ml_collections
import numpy as np

from melgenre_jax.data import audio
from melgenre_jax.data import checksummed_files
from melgenre_jax.data.audio import headers
from melgenre_jax.data.songs import Song
from melgenre_jax.input_spec import InputSpec
from melgenre_jax.runtime.processes import pid_alive

# 2: manifest.json with sizes and checksums. Version-1 entries cannot be
# verified, and the version is in the hash, so they are never reused.
CACHE_VERSION = 2
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
  verify: bool = False  # checksum views of any size (config.data.verify_cache)


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
      'short_clip': p.spec.short_clip,
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


def song_wave(song: Song, p: DecodeParams) -> np.ndarray:
  """The whole song at the training sample rate: a file decoded, or the synthetic song made."""
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
    wave = song_wave(song, p)
    segments = audio.segment_audio(wave, p.spec.segment_samples, p.spec.hop_samples,
                                   p.spec.min_samples, path=where,
                                   short_clip=p.spec.short_clip)
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


@dataclasses.dataclass
class _Decoded:
  """What the decode loop learned, for songs.json and summary.json."""
  song_index: list[np.ndarray] = dataclasses.field(default_factory=list)
  good: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  bad: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  ok: list[bool] = dataclasses.field(default_factory=list)
  counts: list[int] = dataclasses.field(default_factory=list)


def _decode_into(writer: checksummed_files.RowWriter, songs: Sequence[Song],
                 p: DecodeParams, workers: int, progress: bool) -> _Decoded:
  """Streams every usable song's rows into ``writer``; records the rest."""
  d = _Decoded()
  for r in _decode_all(songs, p, workers, progress):
    s = songs[r.index]
    if r.rows is None:
      logging.warning('skipping %s: %s', s.path or s.key, r.reason)
      d.bad.append({'key': s.key, 'path': s.path, 'genre': s.genre,
                    'reason': r.reason})
      d.ok.append(False)
      d.counts.append(0)
      continue
    n = int(r.rows.shape[0])
    d.good.append({'key': s.key, 'first': writer.rows, 'count': n,
                   'seconds': p.spec.seconds(r.num_samples)})
    d.song_index.append(np.full(n, len(d.good) - 1, np.int32))
    writer.append(r.rows)
    d.ok.append(True)
    d.counts.append(n)
  return d


def _write_entry(config: ml_collections.ConfigDict, songs: Sequence[Song],
                 tmp: str, key: str, progress: bool) -> dict[str, Any]:
  """Decodes ``songs`` into folder ``tmp``, the manifest last; the summary."""
  p = decode_params(config)
  start = time.time()
  writer = checksummed_files.RowWriter(os.path.join(tmp, 'inputs.npy'))
  try:
    d = _decode_into(writer, songs, p, int(config.data.cache_workers), progress)
    files = {'inputs.npy': writer.close()}
  except BaseException:
    writer.abort()
    raise
  idx = np.concatenate(d.song_index) if d.song_index else np.zeros(0, np.int32)
  files['song_index.npy'] = checksummed_files.write_npy(
      os.path.join(tmp, 'song_index.npy'), idx)
  files['songs.json'] = checksummed_files.write_json(os.path.join(tmp, 'songs.json'),
                                               d.good)
  summary = {
      'cache_version': CACHE_VERSION,
      'hash': key,
      'source': config.data.source,
      'where': p.spec.where,
      'row_shape': list(writer.row_shape or []),
      'num_songs': len(songs),
      'num_good': len(d.good),
      'num_bad': len(d.bad),
      'num_segments': int(writer.rows),
      'bad_files': d.bad,
      'cut_short_files': headers.cut_short([s.path for s, ok in zip(songs, d.ok) if ok and s.path]),
      'per_genre': _per_genre(songs, d.ok, d.counts),
      'build_seconds': round(time.time() - start, 2),
      'built_at': time.strftime('%Y-%m-%d %H:%M:%S'),
      'fingerprint': {k: v for k, v in fingerprint(config, songs).items()
                      if k != 'songs'},
  }
  files['summary.json'] = checksummed_files.write_json(
      os.path.join(tmp, 'summary.json'), summary)
  checksummed_files.write_manifest(os.path.join(tmp, checksummed_files.MANIFEST), files)
  return summary


def _build(config: ml_collections.ConfigDict, songs: Sequence[Song],
           target: str, key: str, progress: bool) -> None:
  """Decodes ``songs`` into a temp folder and renames it to ``target``.

  On any failure the temp folder is removed; a full disk becomes a
  DiskFullError naming the cache folder.
  """
  cache_dir = os.path.dirname(target)
  tmp = os.path.join(cache_dir,
                     f'{_tmp_prefix(key)}{os.getpid()}-{uuid.uuid4().hex[:6]}')
  with checksummed_files.disk_full_is_user_error(f'the cache {key}', cache_dir):
    try:
      os.makedirs(tmp)
      summary = _write_entry(config, songs, tmp, key, progress)
      checksummed_files.rename_into_place(tmp, target)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
  logging.info('built cache %s: %d/%d songs, %d segments in %.1f s', target,
               summary['num_good'], len(songs), summary['num_segments'],
               summary['build_seconds'])


def _open(target: str, songs: Sequence[Song], *, reused: bool, verify: bool,
          checksum_up_to: float) -> Cache:
  """Opens a complete entry; raises CacheDamaged if any file fails a check."""
  checksummed_files.verify(target, checksummed_files.MANIFEST, checksum_up_to)
  try:
    with open(os.path.join(target, 'summary.json'), encoding='utf-8') as f:
      summary = json.load(f)
    with open(os.path.join(target, 'songs.json'), encoding='utf-8') as f:
      meta = json.load(f)
    inputs = np.load(os.path.join(target, 'inputs.npy'), mmap_mode='r')
    song_index = np.load(os.path.join(target, 'song_index.npy'))
  except (OSError, ValueError) as e:  # JSON and .npy header errors included
    raise checksummed_files.CacheDamaged(f'unreadable: {type(e).__name__}: {e}'
                                   ) from None
  by_key = {s.key: s for s in songs}
  if any(m['key'] not in by_key for m in meta):
    raise checksummed_files.CacheDamaged('songs.json names songs outside the song list')
  if inputs.shape[0] != song_index.shape[0]:
    raise checksummed_files.CacheDamaged(f'inputs.npy has {inputs.shape[0]} rows, '
                                   f'song_index.npy {song_index.shape[0]}')
  return Cache(path=target, inputs=inputs, song_index=song_index,
               songs=[by_key[m['key']] for m in meta],
               first_row=np.array([m['first'] for m in meta], np.int64),
               num_rows=np.array([m['count'] for m in meta], np.int64),
               summary=summary, reused=reused, verify=verify)


def _reuse(target: str, songs: Sequence[Song], verify: bool) -> Cache | None:
  """The intact entry at ``target``; None when absent or moved aside as damaged.

  Moves it only if it is still the folder that failed: another process may
  have replaced a damaged entry with a rebuilt one meanwhile (then look again).
  """
  for _ in range(2):
    try:
      inode = os.stat(target).st_ino
    except FileNotFoundError:
      return None
    try:
      c = _open(target, songs, reused=True, verify=verify,
                checksum_up_to=checksummed_files.checksum_limit(verify))
      logging.info('reusing cache %s', target)
      return c
    except checksummed_files.CacheDamaged as e:
      problem = str(e)
    with contextlib.suppress(FileNotFoundError):
      if os.stat(target).st_ino == inode:
        checksummed_files.move_aside([target], os.path.dirname(target),
                               os.path.basename(target), problem)
        return None
  return None


def build_or_load(config: ml_collections.ConfigDict, songs: Sequence[Song],
                  cache_dir: str, *, progress: bool = True) -> Cache:
  """The cache for (config, songs): reused when complete and intact, else built.

  A damaged entry is moved to ``cache_dir/damaged/`` with a warning and
  rebuilt, so no caller ever reads damaged bytes.
  """
  key = cache_hash(config, songs)
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir))
  os.makedirs(cache_dir, exist_ok=True)
  target = os.path.join(cache_dir, key)
  verify = bool(config.data.get('verify_cache', False))
  reused = _reuse(target, songs, verify)
  if reused is not None:
    return reused
  _cleanup_stale_tmp(cache_dir)
  logging.info('building cache %s for %d songs (%d workers)', target,
               len(songs), config.data.cache_workers)
  _build(config, songs, target, key, progress)
  try:  # checksums were just taken over the bytes written: sizes suffice
    return _open(target, songs, reused=False, verify=verify, checksum_up_to=-1)
  except checksummed_files.CacheDamaged as e:
    raise RuntimeError(f'the cache just built in {target} fails its own '
                       f'check: {e}') from e


# ------------------------------------------------------------- split views


def materialize_rows(cache: Cache, rows: np.ndarray) -> np.ndarray:
  """A read-only memmap holding ``cache.inputs[rows]`` (sorted rows).

  A split is a subset of songs scattered through the cache; copying its rows
  once into their own .npy gives each split a plain memory-mapped array.
  Views are keyed by the row list, reused, and the least recently used are
  pruned beyond ``_MAX_VIEWS``. Each has its own manifest and is checked like
  the entry; a damaged view is moved aside and written again.
  """
  rows = np.asarray(rows, np.int64)
  n_total = cache.inputs.shape[0]
  if rows.shape[0] == n_total and np.array_equal(rows, np.arange(n_total)):
    return cache.inputs
  digest = hashlib.sha256(rows.tobytes()).hexdigest()[:20]
  views = os.path.join(cache.path, 'views')
  view = checksummed_files.open_view(
      views, digest, (rows.shape[0], *cache.inputs.shape[1:]),
      checksummed_files.checksum_limit(cache.verify),
      damaged_name=f'{os.path.basename(cache.path)}.view-{digest}')
  if view is not None:
    return view
  with checksummed_files.disk_full_is_user_error('a split view', views):
    checksummed_files.write_view(views, digest, cache.inputs, rows)
  view = np.load(os.path.join(views, f'{digest}.npy'), mmap_mode='r')
  checksummed_files.prune_views(views, _MAX_VIEWS)
  return view
