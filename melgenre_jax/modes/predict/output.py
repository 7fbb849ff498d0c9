"""Where predict's answers go: text, a JSON report, or a CSV that survives kills.

The CSV is a log: one row per file, appended and flushed as each file
finishes (and fsync'd every few seconds), so a killed run loses only the
files in flight. A re-run with the same file reads it back and skips every
file whose row matches (same path, size, modification time, checkpoint and
excerpt settings); a half-written last row is dropped. A changed file gets a
new row appended: the newest row of a path is its answer.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
from collections.abc import Iterable, Sequence
from typing import IO, Any

from absl import logging

from melgenre_jax import output_paths
from melgenre_jax.runtime import atomic
from melgenre_jax.errors import OutputPathError
from melgenre_jax.modes.predict import inputs

OUTPUTS = ('text', 'json', 'csv')
_FSYNC_SECONDS = 5.0


# ----------------------------------------------------------------------------
# Text.


def _clock(seconds: float) -> str:
  """m:ss, or m:ss.s when segments start between whole seconds."""
  m, s = divmod(float(seconds), 60.0)
  if abs(s - round(s)) < 1e-6:
    return f'{int(m)}:{int(round(s)):02d}'
  return f'{int(m)}:{s:04.1f}'


def format_result(r: dict[str, Any]) -> str:
  """One song: top-k genres with probabilities and a genre-over-time line."""
  if not r['ok']:
    return f"{r['path']}: SKIPPED - {r['reason']}"
  n = r['num_segments']
  lines = [f"{r['path']}  ({r['duration_seconds']:.1f} s, {n} segment{'s' if n != 1 else ''}"
           f"{', padded' if r['padded'] else ''})"]
  if r['status'] == 'uncertain':
    lines.append(f"  UNCERTAIN: {r['reason']}")
  if 'tags' in r:  # multi-label: every tag reaching the threshold, then the top scores
    lines.append(f"  tags (p >= {r['threshold']:g}): {', '.join(r['tags']) or 'none'}")
  for rank, t in enumerate(r['top_k'], 1):
    lines.append(f"  {rank}. {t['genre']:<14} {t['probability']:.3f}")
  if r.get('timeline'):
    lines.append('  timeline: ' + ' | '.join(
        f"{_clock(x['start_seconds'])} {x['genre']}" for x in r['timeline']))
  if 'warning' in r:
    lines.append(f"  warning: {r['warning']}")
  return '\n'.join(lines)


def summary_line(results: Sequence[dict[str, Any]]) -> str:
  ok = sum(r['ok'] for r in results)
  uncertain = sum(r.get('status') == 'uncertain' for r in results)
  return (f'{ok} of {len(results)} file(s) classified'
          + (f', {uncertain} of them uncertain.' if uncertain else '.'))


def format_text(results: Sequence[dict[str, Any]]) -> str:
  return '\n'.join([format_result(r) for r in results] + [summary_line(results)])


# ----------------------------------------------------------------------------
# JSON.


def write_json(path: str, header: dict[str, Any], results: list[dict[str, Any]]) -> None:
  """The whole report, replacing ``path`` only once complete."""
  with atomic.replaced_when_written(path) as f:
    json.dump({**header, 'results': results}, f, indent=1)


# ----------------------------------------------------------------------------
# CSV.

# The columns after the top-k pairs; the last five make a row's resume key with path.
_TAIL = ('checkpoint_step', 'offset_seconds', 'max_seconds', 'hop_seconds', 'size_bytes',
         'mtime')


def csv_header(top_k: int) -> list[str]:
  head = ['path', 'status', 'reason', 'duration_seconds', 'segments']
  for i in range(1, top_k + 1):
    head += [f'genre_{i}', f'probability_{i}']
  return head + list(_TAIL)


def run_settings(step: int, offset_seconds: float, max_seconds: float | None,
                 hop_seconds: float) -> dict[str, str]:
  """The columns that must match for a row to stand for this run, as written."""
  return {'checkpoint_step': str(int(step)), 'offset_seconds': f'{offset_seconds:g}',
          'max_seconds': '' if max_seconds is None else f'{max_seconds:g}',
          'hop_seconds': f'{hop_seconds:g}'}


def row_key(row: dict[str, str]) -> tuple[str, ...]:
  return (row['path'],) + tuple(row[c] for c in _TAIL)


def job_key(stamp: inputs.Stamp, settings: dict[str, str]) -> tuple[str, ...]:
  return row_key({'path': stamp.path, **settings, 'size_bytes': stamp.size_bytes,
                  'mtime': stamp.mtime})


def csv_row(result: dict[str, Any], top_k: int, settings: dict[str, str]) -> list[str]:
  """A result as the columns of ``csv_header(top_k)``."""
  reasons = [x for x in (result.get('reason'), result.get('warning')) if x]
  row = [os.path.abspath(result['path']), result['status'], '; '.join(reasons)]
  if result['ok']:
    row += [f"{result['duration_seconds']:.3f}", str(result['num_segments'])]
  else:
    row += ['', '']
  top = result.get('top_k', [])
  for i in range(top_k):
    row += ([top[i]['genre'], f"{top[i]['probability']:.6f}"] if i < len(top) else ['', ''])
  return row + [settings[c] for c in _TAIL[:4]] + [str(result['size_bytes']),
                                                   str(result['mtime'])]


def read_csv(path: str, header: Sequence[str]) -> tuple[list[dict[str, str]], int]:
  """The complete rows of an existing predictions CSV, and how many lines were torn.

  A row cut short by a kill (no final newline, or too few fields) is not
  returned; the caller rewrites the file without it.

  Raises:
    OutputPathError: the file has other columns (another --top_k, or not ours).
  """
  with open(path, newline='', encoding='utf-8') as f:
    text = f.read()
  torn = 0
  if text and not text.endswith('\n'):
    text, torn = text[:text.rfind('\n') + 1], 1
  records = list(csv.reader(io.StringIO(text, newline='')))
  if not records:
    return [], torn
  problem = header_problem(path, records[0], header)
  if problem:
    raise OutputPathError(problem)
  rows = []
  for record in records[1:]:
    if len(record) == len(header):
      rows.append(dict(zip(header, record)))
    else:
      torn += 1  # a path holding a newline, cut at it
  return rows, torn


def _top_k_of(columns: Sequence[str]) -> int:
  return sum(bool(re.fullmatch(r'genre_\d+', c)) for c in columns)


def header_problem(path: str, columns: Sequence[str], header: Sequence[str]) -> str:
  """'' when an existing CSV's ``columns`` are ``header``, else what to do (one line)."""
  columns, header = list(columns), list(header)
  if columns == header:
    return ''
  if columns[:5] == header[:5] and columns[-len(_TAIL):] == list(_TAIL):
    return (f'{path} was written with --top_k {_top_k_of(columns)}, this run asks for '
            f'--top_k {_top_k_of(header)}: pass --top_k {_top_k_of(columns)} to add to it, '
            'or another --output_file.')
  return (f'{path} is not a predictions CSV (its columns are {",".join(columns)}; ours are '
          f'{",".join(header)}): choose another --output_file.')


def _first_line(path: str) -> str:
  """The first line of an existing file ('' when missing, empty or not text)."""
  if not os.path.isfile(path):
    return ''
  with open(path, 'rb') as f:
    head = f.read(64 * 1024)
  return head.split(b'\n', 1)[0].decode('utf-8', errors='replace').strip()


def check_output_file(path: str, output: str, top_k: int) -> None:
  """Before any work: ``path`` is writable and an existing file holds ``output``'s format.

  A CSV is appended to, so it must have this run's columns; a JSON report is
  replaced, so the file must be one (never a CSV log or someone's document).

  Raises:
    OutputPathError: with the fix, in one line.
  """
  output_paths.check_output_file(path, '--output_file')
  ext = os.path.splitext(path)[1].lower()
  named = {'.json': 'json', '.csv': 'csv'}.get(ext)
  if named and named != output:
    raise OutputPathError(f'--output_file {path} ends in {ext} but --output is {output}: '
                          f'pass --output {named}, or a file name ending in .{output}.')
  first = _first_line(path)
  if not first:
    return
  if output == 'json' and not first.startswith('{'):
    raise OutputPathError(f'--output_file {path} exists and is not a JSON report (it starts '
                          f'{first[:40]!r}); --output json would replace it: choose another '
                          '--output_file, or delete it.')
  if output == 'csv':
    problem = header_problem(path, next(csv.reader([first])), csv_header(top_k))
    if problem:
      raise OutputPathError(problem)


def rewrite_csv(path: str, header: Sequence[str], rows: Iterable[dict[str, str]]) -> None:
  """``path`` holding exactly ``rows``, replaced only once complete (a kill keeps the old)."""
  with atomic.replaced_when_written(path, newline='', encoding='utf-8') as f:
    writer = csv.writer(f, lineterminator='\n')
    writer.writerow(header)
    for row in rows:
      writer.writerow([row[c] for c in header])


def open_csv_log(path: str, header: Sequence[str], repair: bool = True
                 ) -> tuple[dict[tuple[str, ...], dict[str, str]], int]:
  """Reads the CSV a run resumes (dropping torn rows when ``repair``).

  Returns every path's newest row by its key (``row_key``), and how many
  complete rows the file holds.
  """
  if not os.path.exists(path):
    return {}, 0
  rows, torn = read_csv(path, header)
  if torn and repair:
    logging.warning('%s: dropped %d half-written row(s) (a run was stopped mid-write); '
                    'those files are classified again.', path, torn)
    rewrite_csv(path, header, rows)
  newest = {row['path']: row for row in rows}
  return {row_key(r): r for r in newest.values()}, len(rows)


class CsvLog:
  """Appends one row per finished file; flushed at once, fsync'd every few seconds."""

  def __init__(self, path: str, header: Sequence[str]):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    self._file: IO[str] = open(path, 'a', newline='', encoding='utf-8')  # pylint: disable=consider-using-with
    self._synced = time.monotonic()
    if new:
      self._write_line(_line(header))
      self._sync()

  def append(self, row: Sequence[str]) -> None:
    self._write_line(_line(row))
    if time.monotonic() - self._synced >= _FSYNC_SECONDS:
      self._sync()

  def _write_line(self, line: str) -> None:
    self._file.write(line)
    self._file.flush()  # in the OS's hands: survives the process being killed

  def _sync(self) -> None:
    os.fsync(self._file.fileno())  # on the disk: survives a crash of the machine
    self._synced = time.monotonic()

  def close(self) -> None:
    if not self._file.closed:
      self._sync()
      self._file.close()

  def __enter__(self) -> CsvLog:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _line(fields: Sequence[str]) -> str:
  out = io.StringIO()
  csv.writer(out, lineterminator='\n').writerow(fields)
  return out.getvalue()


# ----------------------------------------------------------------------------
# Plots.


def plot_name(path: str, used: set[str]) -> str:
  """``<song>_timeline.png``, unique among ``used`` (song.wav and song.mp3 do not collide)."""
  stem = re.sub(r'[^A-Za-z0-9._-]+', '_', os.path.splitext(os.path.basename(path))[0]) or 'song'
  name, i = stem, 1
  while name in used:
    i += 1
    name = f'{stem}_{i}'
  used.add(name)
  return f'{name}_timeline.png'
