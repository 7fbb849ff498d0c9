"""Finding the songs of a dataset (``config.data.source``) as ``Song`` records.

Nothing is decoded here: this only walks folders / reads a CSV, so it is fast
and its output (the song list) is what the cache is keyed on. What is specific
to GTZAN (genres, folder layouts, track names) lives in ``gtzan``.
"""

from __future__ import annotations

import collections
import csv
import os
import unicodedata

from absl import logging
import ml_collections

from melgenre_jax import errors
from melgenre_jax.data import audio
from melgenre_jax.data import folders
from melgenre_jax.data import gtzan
from melgenre_jax.data.songs import Song
from melgenre_jax.data.songs import song_tags

SOURCES = ('synthetic', 'gtzan', 'folder', 'manifest')

# Accepted spellings of the manifest's split column.
SPLIT_ALIASES = {
    'train': 'train', 'training': 'train',
    'validation': 'validation', 'valid': 'validation', 'val': 'validation',
    'dev': 'validation',
    'test': 'test', 'testing': 'test', 'eval': 'test', 'evaluation': 'test',
}

_IGNORED_DIRS = ('__MACOSX',)

# Separates the tags of a multi-label manifest's label column (rock;guitar;fast).
TAG_SEPARATOR = ';'


def _skip_name(name: str) -> bool:
  """Hidden files/dirs and macOS resource forks are never songs or genres."""
  return name.startswith('.') or name in _IGNORED_DIRS


def _require_root(config: ml_collections.ConfigDict) -> str:
  root = config.data.root
  source = config.data.source
  if not root:
    raise errors.ConfigError(
        f'config.data.root is empty but config.data.source={source!r} needs '
        'it: pass --config.data.root=/path/to/dataset')
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise errors.MissingPathError(
        f'config.data.root={config.data.root!r} is not an existing folder '
        f'(source={source!r}): fix --config.data.root')
  return root


def list_folder(root: str) -> list[Song]:
  """``ROOT/<genre>/**/<file>``: genre = top-level folder, key = relative path.

  Symlinked folders are followed (a library assembled from links is common),
  each real folder read once, so a link loop ends with a warning; a file
  reached twice is one song (``songs.identify``).
  """
  songs = []
  ignored = 0
  genre_dirs = sorted(
      d for d in os.listdir(root)
      if not _skip_name(d) and os.path.isdir(os.path.join(root, d)))
  loose = [f for f in os.listdir(root)
           if os.path.isfile(os.path.join(root, f)) and not _skip_name(f)]
  if loose:
    logging.warning('folder source: ignoring %d file(s) directly under %s '
                    '(songs must sit in a genre folder), e.g. %s', len(loose),
                    root, sorted(loose)[0])
  if not genre_dirs:
    raise errors.DataError(
        f'config.data.root={root!r} has no genre folders: expected '
        'ROOT/<genre>/<song files> (e.g. ROOT/jazz/track01.wav)')
  empty = []
  visited: set[str] = set()  # real folders read, over all genres (folders.walk)
  for genre in genre_dirs:
    count = 0
    for dirpath, filenames in folders.walk(os.path.join(root, genre), visited, _skip_name):
      for name in filenames:
        if not audio.has_supported_extension(name):
          ignored += 1
          continue
        path = os.path.join(dirpath, name)
        rel = os.path.relpath(path, root).replace(os.sep, '/')
        key = unicodedata.normalize('NFC', rel)
        genre_name = unicodedata.normalize('NFC', genre)
        songs.append(Song(key=key, path=path, genre=genre_name))
        count += 1
    if count == 0:
      empty.append(genre)
  if empty:
    raise errors.DataError(
        f'genre folder(s) {empty} under config.data.root={root!r} hold no '
        f'audio files (supported: {", ".join(sorted(audio.SUPPORTED_EXTENSIONS))}'
        '): add songs or remove the folder(s)')
  if ignored:
    logging.info('folder source: ignored %d file(s) without a supported audio '
                 'extension', ignored)
  logging.info('folder source: %d songs in %d genres under %s', len(songs),
               len(genre_dirs), root)
  return sorted(songs, key=lambda s: s.key)


def parse_tags(label: str) -> tuple[str, ...]:
  """``rock;guitar;fast`` -> its tags (MagnaTagATune / MTG-Jamendo style), in order, once each."""
  tags = (unicodedata.normalize('NFC', t.strip()) for t in label.split(TAG_SEPARATOR))
  return tuple(dict.fromkeys(t for t in tags if t))


def read_manifest(path: str, task: str = 'genre') -> list[Song]:
  """CSV ``path,label[,split][,group]`` with a header row.

  Relative paths are resolved against the CSV's folder. Missing files are not
  an error here: the decoder reports them as bad files with the reason.
  With ``task='multilabel'`` a label may hold several ``;``-separated tags:
  the song gets them all, the first being its ``genre`` (what stratified and
  group splits balance on). A genre run refuses such labels rather than
  treating ``rock;guitar`` as one genre name.
  """
  if not path:
    raise errors.ConfigError(
        "config.data.source='manifest' needs a CSV: pass "
        '--config.data.manifest=/path/to/songs.csv (columns '
        'path,label[,split][,group])')
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise errors.MissingPathError(f'config.data.manifest={path!r} does not exist')
  base = os.path.dirname(path)
  songs = []
  seen: dict[str, int] = {}
  seen_files: dict[str, tuple[int, str]] = {}
  with open(path, newline='', encoding='utf-8-sig') as f:
    reader = csv.DictReader(f)
    fields = [c.strip().lower() for c in (reader.fieldnames or [])]
    if 'path' not in fields or 'label' not in fields:
      raise errors.DataError(
          f'manifest {path}: header must name columns path,label[,split]'
          f'[,group]; got {reader.fieldnames}')
    for line, row in enumerate(reader, start=2):
      row = {(k or '').strip().lower(): (v or '').strip()
             for k, v in row.items() if k is not None}
      if not any(row.values()):
        continue
      rel, label = row.get('path', ''), row.get('label', '')
      if not rel or not label:
        raise errors.DataError(
            f'manifest {path} line {line}: empty path or label')
      split = row.get('split') or None
      if split is not None:
        if split.lower() not in SPLIT_ALIASES:
          raise errors.DataError(
              f'manifest {path} line {line}: split {split!r} is not one of '
              'train, validation (val/valid/dev), test (or empty)')
        split = SPLIT_ALIASES[split.lower()]
      group = row.get('group') or None
      key = unicodedata.normalize('NFC', os.path.normpath(rel).replace(
          os.sep, '/'))
      if key in seen:
        raise errors.DataError(
            f'manifest {path} line {line}: {rel!r} already listed '
            f'on line {seen[key]}')
      seen[key] = line
      abspath = rel if os.path.isabs(rel) else os.path.join(base, rel)
      real = os.path.realpath(abspath)
      if real in seen_files:
        first_line, first = seen_files[real]
        raise errors.DataError(
            f'manifest {path} line {line}: {rel!r} is the same file as {first!r} on line '
            f'{first_line} (both are {real}): list each file once')
      seen_files[real] = (line, rel)
      tags = ()
      if TAG_SEPARATOR in label:
        if task != 'multilabel':
          raise errors.DataError(
              f'manifest {path} line {line}: label {label!r} holds several '
              f"{TAG_SEPARATOR!r}-separated tags, which only a multi-label run "
              'reads: pass --config.task=multilabel (or give one genre per song)')
        tags = parse_tags(label)
        if not tags:
          raise errors.DataError(
              f'manifest {path} line {line}: label {label!r} holds no tag')
        label = tags[0]
      songs.append(Song(key=key, path=os.path.normpath(abspath),
                        genre=unicodedata.normalize('NFC', label), group=group,
                        split=split, tags=tags))
  if not songs:
    raise errors.DataError(f'manifest {path} lists no songs')
  logging.info('manifest: %d songs from %s', len(songs), path)
  return songs


def discover_songs(config: ml_collections.ConfigDict) -> list[Song]:
  """The songs of ``config.data.source``, sorted by key (deterministic)."""
  source = config.data.source
  if source == 'synthetic':
    from melgenre_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    syn = config.data.synthetic
    songs = list(synthetic.list_synthetic_songs(
        syn.songs_per_genre, syn.num_genres, genres=tuple(syn.get('genres', ())),
        tagged=bool(syn.get('tagged', False))))
  elif source == 'gtzan':
    songs = gtzan.list_gtzan(_require_root(config))
  elif source == 'folder':
    songs = list_folder(_require_root(config))
  elif source == 'manifest':
    songs = read_manifest(config.data.manifest, config.task)
  else:
    raise errors.ConfigError(
        f'config.data.source={source!r} is not one of {SOURCES}')
  if not songs:
    raise errors.DataError(
        f'config.data.source={source!r} found no songs (root='
        f'{config.data.root!r}, supported extensions: '
        f'{", ".join(sorted(audio.SUPPORTED_EXTENSIONS))})')
  keys = collections.Counter(s.key for s in songs)
  dup = [k for k, c in keys.items() if c > 1]
  if dup:
    raise errors.DataError(
        f'duplicate song keys from source {source!r}: {dup[:5]}')
  return songs


def genre_names(config: ml_collections.ConfigDict,
                songs: list[Song]) -> list[str]:
  """Label order: the source's canonical list when it has one, else sorted."""
  present = {s.genre for s in songs}
  if config.data.source == 'gtzan':
    return list(gtzan.GTZAN_GENRES)
  if config.data.source == 'synthetic':
    from melgenre_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    canonical = [g for g in synthetic.GENRES if g in present]
    return canonical + sorted(present - set(canonical))
  return sorted(present)


def tag_names(config: ml_collections.ConfigDict, songs: list[Song]) -> list[str]:
  """Output order of a multi-label run: sorted, or a built-in source's genres first.

  For gtzan and synthetic the genres keep their canonical order (as in a
  genre run) and the other tags (the synthetic set's rhythm and brightness)
  follow, sorted.
  """
  present = {t for s in songs for t in song_tags(s)}
  if config.data.source not in ('gtzan', 'synthetic'):
    return sorted(present)
  first = [g for g in genre_names(config, songs) if g in present]
  return first + sorted(present - set(first))
