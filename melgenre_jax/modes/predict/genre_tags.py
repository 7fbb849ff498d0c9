"""Write predict's top genre into each audio file's own genre tag.

The tag is the one players read: ID3 ``TCON`` (MP3, and an existing ID3 chunk
of WAV/AIFF), the Vorbis comment ``GENRE`` (FLAC, Ogg Vorbis, Opus) and MP4
``©gen`` (M4A/MP4). ``plan`` decides per file and reads nothing but tags, so a
dry run (``plan`` + ``format_actions``) changes no file; ``apply`` writes.
``plan(..., keep_existing=True)`` (``--write_tags=keep``) leaves a genre a
person already set alone: only files without one are written.
Files predict skipped or was unsure about are never tagged: a wrong genre
written into a user's library is worse than none.

Writing is safe by construction rather than by checking afterwards: mutagen
rewrites files in place and, when the new tag outgrows the padding, moves the
whole audio payload, so a crash, a full disk or a mutagen bug mid-write would
leave a truncated song. Each file is therefore tagged in a temporary copy next
to it, the copy is re-read (genre, duration, sample rate), and only then
renamed over the original (``runtime.atomic.replacing``, which fsyncs it first
and removes it on any failure). The copy costs one read and write of the file,
small next to the full decode predict just did, and buys an original that is
either untouched or fully tagged. Decoding the copy as well is not done: the
audio bytes are copied verbatim, and a partial write (the real risk) never
reaches the original.

Typical use (``predict --write_tags``)::

  actions, listing = genre_tags.tag_results(results, apply_writes=flag == 'apply')
  print(listing)
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import stat
from typing import Any, Iterable, Literal

from absl import logging

from melgenre_jax.errors import UserError
from melgenre_jax.runtime import atomic

Action = Literal['write', 'unchanged', 'kept', 'skip', 'failed']

APPLY_HINT = '--write_tags=apply'
KEEP_HINT = '--write_tags=keep'
_SUPPORTED = 'MP3, FLAC, Ogg Vorbis, Opus and MP4/M4A'
# Relative tolerance on the duration mutagen reads before and after tagging:
# the audio bytes are untouched, so only a damaged file moves it.
_LENGTH_RTOL = 0.01


class TagError(UserError):
  """A file's genre tag cannot be read or written; ``reason`` says why and what to do."""

  def __init__(self, path: str, reason: str):
    super().__init__(f'{path}: {reason}')
    self.path = path
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class TagAction:
  """What happens (or happened) to one file's genre tag.

  ``action``: 'write' (the genre differs or is absent), 'unchanged' (already
  that genre), 'kept' (another genre is there and ``keep_existing`` keeps it),
  'skip' (not to be tagged; ``reason`` says why) or, after ``apply``,
  'failed' (``reason`` says why; the file is unchanged).
  """
  path: str
  old_genre: str | None
  new_genre: str | None
  action: Action
  reason: str | None = None


# --- Reading and writing one file ------------------------------------------


def _load(path: str):
  """The mutagen object for ``path``, chosen by content as well as extension.

  ``mutagen.File`` lets an extension outweigh the content (an Ogg file named
  ``.flac`` is tried as FLAC only and fails), so on failure the kinds are
  scored again on the first bytes alone.
  """
  import mutagen  # pylint: disable=g-import-not-at-top
  try:
    f = mutagen.File(path)
  except FileNotFoundError:
    raise TagError(path, 'file not found') from None
  except IsADirectoryError:
    raise TagError(path, 'is a folder, not an audio file') from None
  except PermissionError:
    raise TagError(path, 'permission denied reading the file') from None
  except mutagen.MutagenError as e:
    f = _load_by_content(path)
    if f is None:
      raise TagError(path, f'corrupt or not an audio file (mutagen: {e}); '
                     'check that it plays') from None
  except OSError as e:
    raise TagError(path, f'cannot read the file: {e.strerror or e}') from None
  if f is None:  # No kind scored above 0, by content or extension.
    raise TagError(path, f'unsupported format: not a recognised audio file '
                   f'(genre tags are written to {_SUPPORTED})')
  return f


def _load_by_content(path: str):
  import mutagen  # pylint: disable=g-import-not-at-top
  from mutagen.aiff import AIFF  # pylint: disable=g-import-not-at-top
  from mutagen.flac import FLAC  # pylint: disable=g-import-not-at-top
  from mutagen.mp3 import MP3  # pylint: disable=g-import-not-at-top
  from mutagen.mp4 import MP4  # pylint: disable=g-import-not-at-top
  from mutagen.oggflac import OggFLAC  # pylint: disable=g-import-not-at-top
  from mutagen.oggopus import OggOpus  # pylint: disable=g-import-not-at-top
  from mutagen.oggvorbis import OggVorbis  # pylint: disable=g-import-not-at-top
  from mutagen.wave import WAVE  # pylint: disable=g-import-not-at-top
  try:
    with open(path, 'rb') as fobj:
      header = fobj.read(128)
      scored = sorted(((kind.score('', fobj, header), kind.__name__, kind)
                       for kind in (MP3, FLAC, OggVorbis, OggOpus, OggFLAC, MP4, WAVE, AIFF)),
                      reverse=True)
  except OSError:
    return None
  for score, _, kind in scored:
    if score <= 0:
      break
    try:
      return kind(path)
    except (mutagen.MutagenError, OSError):
      continue
  return None


def _field(f, path: str) -> str:
  """Which genre field ``f`` holds: 'id3', 'vorbis' or 'mp4'; TagError when none."""
  from mutagen.flac import FLAC  # pylint: disable=g-import-not-at-top
  from mutagen.id3 import ID3  # pylint: disable=g-import-not-at-top
  from mutagen.mp3 import MP3  # pylint: disable=g-import-not-at-top
  from mutagen.mp4 import MP4  # pylint: disable=g-import-not-at-top
  from mutagen.oggflac import OggFLAC  # pylint: disable=g-import-not-at-top
  from mutagen.oggopus import OggOpus  # pylint: disable=g-import-not-at-top
  from mutagen.oggspeex import OggSpeex  # pylint: disable=g-import-not-at-top
  from mutagen.oggvorbis import OggVorbis  # pylint: disable=g-import-not-at-top
  if isinstance(f, MP3) or isinstance(f.tags, ID3):
    return 'id3'
  if isinstance(f, (FLAC, OggVorbis, OggOpus, OggFLAC, OggSpeex)):
    return 'vorbis'
  if isinstance(f, MP4):
    return 'mp4'
  name = type(f).__name__
  if name in ('WAVE', 'AIFF'):
    # An ID3 chunk added to a WAV/AIFF is ignored or rejected by many
    # players and tools, so only one that is already there is written.
    raise TagError(path, f'unsupported format: {name} file without a tag chunk (only an '
                   'existing ID3 chunk of WAV/AIFF is written; convert it to FLAC to tag it)')
  raise TagError(path, f'unsupported format: {name} (genre tags are written to {_SUPPORTED})')


def _get(f, field: str) -> str | None:
  tags = f.tags
  if tags is None:
    return None
  if field == 'id3':
    values = [g for frame in tags.getall('TCON') for g in frame.genres]
  elif field == 'vorbis':
    values = tags.get('GENRE') or []
  else:  # mutagen reads iTunes' numeric 'gnre' atom as '©gen' and writes it so.
    values = tags.get('\xa9gen') or []
  values = [str(v).strip() for v in values if str(v).strip()]
  return '; '.join(values) or None


def _set(f, field: str, genre: str) -> None:
  """Replaces every genre value of ``f`` with ``genre``; other tags are left alone."""
  if f.tags is None:
    f.add_tags()
  if field == 'id3':
    from mutagen.id3 import TCON  # pylint: disable=g-import-not-at-top
    f.tags.setall('TCON', [TCON(encoding=3, text=[genre])])
  elif field == 'vorbis':
    f.tags['GENRE'] = [genre]  # Case-insensitive: also replaces 'genre', 'Genre'.
  else:
    f.tags['\xa9gen'] = [genre]


def _save(f, field: str) -> None:
  if field == 'id3':
    # Keep the tag's ID3 version: mutagen would upgrade v2.3 to v2.4, which
    # some players (Windows Explorer, older car stereos) do not read.
    f.save(v2_version=3 if f.tags.version < (2, 4, 0) else 4)
  else:
    f.save()


def read_genre(path: str) -> str | None:
  """The file's genre tag (several values joined by '; '), or None when it has none.

  Raises TagError for a file that cannot be tagged (unsupported format,
  corrupt, missing), with the reason.
  """
  f = _load(path)
  return _get(f, _field(f, path))


def check_writable(path: str) -> None:
  """Raises TagError when ``write_genre`` could not replace ``path``.

  A file without write permission bits is refused even for root, who could
  write it: the user marked it read-only. The folder must be writable too,
  since the tagged copy is renamed over the file.
  """
  real = os.path.realpath(path)
  try:
    st = os.stat(real)
  except FileNotFoundError:
    raise TagError(path, 'file not found') from None
  except OSError as e:
    raise TagError(path, f'cannot read the file: {e.strerror or e}') from None
  if not st.st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH) or not os.access(real, os.W_OK):
    raise TagError(path, f'the file is read-only; make it writable (chmod u+w {path!r}) '
                   'to tag it')
  folder = os.path.dirname(real)
  if not os.access(folder, os.W_OK | os.X_OK):
    raise TagError(path, f'folder {folder} is not writable: the tagged copy is written next '
                   'to the file and renamed over it')
  if st.st_nlink > 1:
    raise TagError(path, f'the file has {st.st_nlink} hard links; tagging replaces the file, '
                   'which would leave the other links with the old tags. Tag one of them '
                   'after removing the others (or copy it)')


def write_genre(path: str, genre: str) -> None:
  """Sets the file's genre tag to ``genre``, replacing only the genre.

  The original is replaced only by a fully written and re-read copy (see the
  module docstring); on any failure it is left byte-identical and TagError
  says why. A symlink keeps pointing at the (now tagged) target.
  """
  genre = (genre or '').strip()
  if not genre:
    raise TagError(path, 'no genre to write (empty)')
  real = os.path.realpath(path)
  f = _load(real)
  field = _field(f, path)
  check_writable(path)
  # The copy sits next to the file (same folder: the rename stays on one file
  # system); a unique name, so two runs tagging one folder never share it.
  with atomic.replacing(real, suffix='.tagging', unique=True) as tmp:
    _copy(real, tmp, path)
    try:
      copy = type(f)(tmp)
      _set(copy, field, genre)
      _save(copy, field)
    except Exception as e:  # pylint: disable=broad-except
      if _disk_full(e):
        raise TagError(path, 'disk full while writing the tag; the file is unchanged. '
                       'Free some space and run again') from e
      raise TagError(path, f'could not write the tag ({type(e).__name__}: {e}); '
                     'the file is unchanged') from e
    _verify(tmp, type(f), f.info, field, genre, path)
  logging.info('Wrote genre %r to %s', genre, path)


def _disk_full(e: BaseException | None) -> bool:
  """Whether ``e`` or what caused it is ENOSPC (mutagen wraps OSError in its own errors)."""
  while e is not None:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    e = e.__cause__ or e.__context__
  return False


def _copy(real: str, tmp: str, path: str) -> None:
  """``real`` copied to ``tmp`` (same mode, times, owner where allowed)."""
  try:
    shutil.copy2(real, tmp)
    st = os.stat(real)
    if hasattr(os, 'chown') and os.stat(tmp).st_uid != st.st_uid:
      try:
        os.chown(tmp, st.st_uid, st.st_gid)
      except PermissionError:
        pass  # Only root can give a file away; then it was ours anyway.
  except OSError as e:
    if _disk_full(e):
      raise TagError(path, f'disk full while copying the file to tag it in '
                     f'{os.path.dirname(real)}; the file is unchanged. Free some space and '
                     'run again') from e
    raise TagError(path, f'cannot copy the file to tag it: {e.strerror or e}; '
                   'the file is unchanged') from e


def _verify(tmp: str, kind, info, field: str, genre: str, path: str) -> None:
  """The tagged copy parses as the same audio and holds exactly ``genre``."""
  try:
    copy = kind(tmp)
    got = _get(copy, field)
  except Exception as e:  # pylint: disable=broad-except
    raise TagError(path, f'the tagged copy did not read back ({type(e).__name__}: {e}); '
                   'the file is unchanged') from e
  before, after = getattr(info, 'length', 0) or 0, getattr(copy.info, 'length', 0) or 0
  same = (got == genre
          and abs(after - before) <= _LENGTH_RTOL * max(before, 1.0)
          and getattr(info, 'sample_rate', None) == getattr(copy.info, 'sample_rate', None)
          and getattr(info, 'channels', None) == getattr(copy.info, 'channels', None))
  if not same:
    raise TagError(path, f'the tagged copy read back differently (genre {got!r}, '
                   f'{after:.2f} s instead of {before:.2f} s); the file is unchanged')


# --- Many files: plan, apply, listing --------------------------------------


def _same_genre(a: str | None, b: str | None) -> bool:
  return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def plan(results: Iterable[dict[str, Any]], keep_existing: bool = False) -> list[TagAction]:
  """One TagAction per predict result; reads tags, writes nothing.

  Skipped (``ok`` False) and ``uncertain`` results are never tagged, nor is
  a file whose tag cannot be read or written (unsupported, corrupt,
  read-only): the dry run shows the problem instead of ``apply`` failing.
  A genre equal but for case counts as unchanged, so no file is rewritten
  for capitalisation alone. ``keep_existing``: a file that already has
  another genre is 'kept', not rewritten.
  """
  actions = []
  for r in results:
    path, new = r['path'], r.get('genre')
    if not r.get('ok'):
      actions.append(TagAction(path, None, new, 'skip', f"skipped: {r.get('reason')}"))
    elif r.get('uncertain'):
      actions.append(TagAction(path, None, new, 'skip', 'uncertain'))
    elif not new:
      actions.append(TagAction(path, None, new, 'skip', 'no genre predicted'))
    else:
      actions.append(_plan_one(path, new, keep_existing))
  return actions


def _plan_one(path: str, new: str, keep_existing: bool) -> TagAction:
  try:
    old = read_genre(path)
  except TagError as e:
    return TagAction(path, None, new, 'skip', e.reason)
  if _same_genre(old, new):
    return TagAction(path, old, new, 'unchanged')
  if keep_existing and old is not None:
    return TagAction(path, old, new, 'kept', 'already has a genre')
  try:
    check_writable(path)
  except TagError as e:
    return TagAction(path, old, new, 'skip', e.reason)
  return TagAction(path, old, new, 'write')


def apply(actions: Iterable[TagAction]) -> list[TagAction]:
  """Does every 'write' action; a file that fails becomes 'failed' with its reason.

  One bad file does not stop the rest. Errors that are not a TagError (a
  mutagen bug on an odd file) are caught too, for the same reason, and logged
  with their traceback.
  """
  out = []
  for a in actions:
    if a.action != 'write':
      out.append(a)
      continue
    try:
      write_genre(a.path, a.new_genre)
      out.append(a)
    except TagError as e:
      logging.warning('Genre tag not written: %s', e)
      out.append(dataclasses.replace(a, action='failed', reason=e.reason))
    except Exception as e:  # pylint: disable=broad-except
      logging.exception('Genre tag not written to %s', a.path)
      out.append(dataclasses.replace(
          a, action='failed', reason=f'unexpected error ({type(e).__name__}: {e}); '
          'the file is unchanged'))
  return out


def _was(genre: str | None) -> str:
  return f'was {genre!r}' if genre else 'had no genre'


def format_actions(actions: list[TagAction], applied: bool, flag: str = APPLY_HINT) -> str:
  """The listing the user sees; a dry run ends with how to apply it.

  ``flag``: the write flag to name when failures are to be retried
  (``--write_tags=keep`` when that was the one given).
  """
  lines = ['Genre tags:' if applied else 'Genre tags (dry run, no file changed):']
  for a in actions:
    if a.action == 'write':
      verb = 'wrote' if applied else 'would write'
      lines.append(f'  {a.path}: {verb} {a.new_genre!r} ({_was(a.old_genre)})')
    elif a.action == 'unchanged':
      lines.append(f'  {a.path}: unchanged, already {a.old_genre!r}')
    elif a.action == 'kept':
      lines.append(f'  {a.path}: kept {a.old_genre!r} (predicted {a.new_genre!r})')
    elif a.action == 'failed':
      lines.append(f'  {a.path}: FAILED - {a.reason}')
    else:
      lines.append(f'  {a.path}: not tagged - {a.reason}')
  count = {k: sum(a.action == k for a in actions)
           for k in ('write', 'unchanged', 'kept', 'skip', 'failed')}
  written = f"{count['write']} {'written' if applied else 'to write'}"
  kept = f", {count['kept']} kept" if count['kept'] else ''
  summary = f"{written}, {count['unchanged']} unchanged{kept}, {count['skip']} not tagged"
  lines.append(summary + (f", {count['failed']} failed." if count['failed'] else '.'))
  if not applied:
    lines.append(f'To write these tags, run the same command with {APPLY_HINT}.'
                 if count['write'] else f'No tag would change; {APPLY_HINT} has nothing to write.')
  elif count['failed']:
    lines.append(f'Fix the reasons above and run again with {flag}: files already '
                 'tagged then show as unchanged.')
  return '\n'.join(lines)


def tag_results(results: Iterable[dict[str, Any]], apply_writes: bool,
                keep_existing: bool = False) -> tuple[list[TagAction], str]:
  """``plan``, then ``apply`` when ``apply_writes``; the actions and their listing."""
  actions = plan(results, keep_existing)
  if apply_writes:
    actions = apply(actions)
  return actions, format_actions(actions, applied=apply_writes,
                                 flag=KEEP_HINT if keep_existing else APPLY_HINT)
