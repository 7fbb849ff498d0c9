"""``--mode=cv``: k-fold cross-validation, each fold an ordinary resumable training run.

A single test split's score depends on which songs it drew; cross-validation
tests every song once per repeat and reports the mean with its spread.
Everything lives in ``WORKDIR/cv/``:

  * ``folds.json`` - the settings and every usable song's test fold per repeat,
    written once, before any training; later runs of the command read it back
    (and refuse other settings or another song set), so folds never move under
    a half-finished cross-validation;
  * ``fold_<r>_<k>/`` - repeat ``r``, fold ``k``: a normal training workdir.
    Its ``split.json`` is its explicit split (test: fold ``k``; validation
    carved by group/song and genre from the other folds, none with
    ``config.cv.validation_fraction=0``: the run then trains on every other
    fold's song and is tested at its last epoch; train: the rest),
    which the run reads through ``config.data.split='file'``, so the run uses
    exactly the recorded folds. Then ``eval/`` (modes/evaluate.py) and
    ``cv_fold.json``, the fold's scores, written last: its presence means done;
  * ``summary.json``, ``summary.md``, ``confusion_matrix.png`` - per-fold scores,
    mean and sample sd over folds x repeats, and the song confusion matrix
    pooled over every test fold. Rewritten after each fold, marked complete
    when every fold is.

Repeat ``r`` assigns folds and trains with seed ``config.seed + r``. Folds keep
groups (artists) whole when ``config.cv.by`` says so (``auto``: whenever the
source gives groups) and are stratified by genre as far as groups allow. Killed
and run again, the command skips finished folds and resumes an interrupted one
from its checkpoint. All folds share one decode cache (``WORKDIR/cache``
unless ``config.data.cache_dir``).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import checkpointing
from melgenre_jax import config_checks
from melgenre_jax import reporting
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import checksummed_files
from melgenre_jax.data import input_pipeline
from melgenre_jax.data import splits
from melgenre_jax.data.songs import Song
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import DataError
from melgenre_jax.modes import eval_format
from melgenre_jax.modes import evaluate
from melgenre_jax.runtime import atomic
from melgenre_jax.runtime import parallel
from melgenre_jax.runtime import processes
from melgenre_jax.runtime import workdir_lock

CV_DIR = workdir_lib.CV
FOLDS_FILE = 'folds.json'
SPLIT_FILE = 'split.json'
DONE_FILE = 'cv_fold.json'
# Scores summarised over folds (from each fold's eval/report.json).
METRICS = ('song_accuracy', 'segment_accuracy', 'song_macro_f1', 'segment_macro_f1',
           'song_vote_accuracy')
_LABELS = {'song_accuracy': 'song accuracy', 'segment_accuracy': 'segment accuracy',
           'song_macro_f1': 'song macro-F1', 'segment_macro_f1': 'segment macro-F1',
           'song_vote_accuracy': 'song accuracy (majority vote)'}

# train.train_and_evaluate(config, workdir) -> its summary dict;
# evaluate.evaluate_workdir(config, workdir) -> the report dict.
TrainFn = Callable[[ml_collections.ConfigDict, str], dict]
EvaluateFn = Callable[[ml_collections.ConfigDict, str], dict]


@dataclasses.dataclass
class FoldRun:
  """One training run of the cross-validation: repeat ``repeat``, test fold ``fold``."""
  repeat: int
  fold: int
  seed: int
  workdir: str
  split: splits.SongSplit

  @property
  def name(self) -> str:
    return f'fold_{self.repeat}_{self.fold}'


def run_cv(config: ml_collections.ConfigDict, workdir: str, *,
           train_fn: TrainFn | None = None,
           evaluate_fn: EvaluateFn | None = None) -> dict[str, Any]:
  """Runs (or resumes) the cross-validation; returns the summary (see module doc).

  ``train_fn``/``evaluate_fn`` default to ``train.train_and_evaluate`` and
  ``evaluate.evaluate_workdir``; tests wrap them to count or interrupt folds.
  The workdir is locked for the whole run; each fold's run locks its own folder.
  """
  config_checks.validate(config)
  config_checks.check_genre_task(
      config, '--mode=cv reports genre accuracy and macro-F1 per fold',
      'it is scored by ROC-AUC/PR-AUC instead; train with --mode=train and evaluate with '
      '--mode=eval (or drop --config.task=multilabel)')
  with checkpointing.stop_on_full_disk(workdir), workdir_lock.hold(workdir, 'cv'):
    return _run_cv(config, os.path.abspath(workdir), train_fn, evaluate_fn)


def _run_cv(config: ml_collections.ConfigDict, workdir: str, train_fn: TrainFn | None,
            evaluate_fn: EvaluateFn | None) -> dict[str, Any]:
  """``run_cv`` with the workdir locked."""
  if train_fn is None:
    train_fn = train.train_and_evaluate
  if evaluate_fn is None:
    evaluate_fn = evaluate.evaluate_workdir
  is_chief = jax.process_index() == 0
  cv_dir = os.path.join(workdir, CV_DIR)
  os.makedirs(cv_dir, exist_ok=True)
  if is_chief:
    processes.remove_orphaned_temp_files(cv_dir)
  if config.data.split != 'stratified':
    logging.info('cv: config.data.split=%r is not used: every fold run is split by the '
                 'recorded folds.', config.data.split)
  config = config.copy_and_resolve_references()
  with config.unlocked():  # every fold decodes nothing: one shared cache
    config.data.cache_dir = os.path.abspath(os.path.expanduser(
        config.data.cache_dir or workdir_lib.path(workdir, workdir_lib.CACHE)))
  found = input_pipeline.cached_songs(config, cv_dir)
  record = load_or_assign_folds(config, found.songs, os.path.join(cv_dir, FOLDS_FILE),
                                write=is_chief)
  runs = plan_runs(config, found.songs, record, cv_dir)
  if is_chief:
    for run in runs:
      write_split_file(run, record['fold_unit'])
  parallel.barrier('cv_split_files')

  rows = []
  for i, run in enumerate(runs):
    done = read_done(run.workdir)
    if done is not None:
      logging.info('cv: %s already evaluated (song accuracy %.3f): skipped.', run.name,
                   done['song_accuracy'])
      rows.append(done)
      continue
    logging.info('cv: %s (%d of %d runs): repeat %d, test fold %d, %d train / %d '
                 'validation / %d test songs, seed %d.', run.name, i + 1, len(runs),
                 run.repeat, run.fold, len(run.split.train), len(run.split.validation),
                 len(run.split.test), run.seed)
    fold_config = fold_run_config(config, run)
    result = train_fn(fold_config, run.workdir)
    if result.get('stopped'):
      logging.warning('cv: stopped by %s during %s; run the same command to resume.',
                      result['stopped'], run.name)
      return {'stopped': result['stopped'], 'fold_run': run.name, 'runs_done': len(rows)}
    report = evaluate_fn(fold_config, run.workdir)
    row = fold_scores(run, report)
    if is_chief:
      checksummed_files.write_json(os.path.join(run.workdir, DONE_FILE), row)
      write_summary(cv_dir, summarize(rows + [row], record, len(runs), workdir))
    rows.append(row)

  summary = summarize(rows, record, len(runs), workdir)
  if is_chief:
    write_summary(cv_dir, summary)
    print(format_short(summary))  # CLI output
    print(f'Report: {os.path.join(cv_dir, "summary.md")}')
  return summary


# ----------------------------------------------------------------------------
# The fold assignment (folds.json) and each run's split (split.json).


def cv_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What fixes the folds: another value means other folds, so a resume refuses it."""
  return {'num_folds': int(config.cv.num_folds), 'repeats': int(config.cv.repeats),
          'by': str(config.cv.by), 'seed': int(config.seed),
          'validation_fraction': float(config.cv.validation_fraction)}


def assign_folds(config: ml_collections.ConfigDict, songs: Sequence[Song]
                 ) -> tuple[str, dict[str, list[int]]]:
  """The fold unit ('song'/'group') and every song's test fold per repeat.

  Repeat ``r`` is seeded with ``config.seed + r``; repeat 0 by group (or by
  song without groups) gives the same folds as ``config.data.split='kfold'``.
  """
  by = splits.resolve_fold_unit(songs, config.cv.by)
  units = songs if by == 'group' else splits.ungrouped(songs)
  config_checks.check_cv_folds(config, units, by)
  per_repeat = [splits.assign_folds(units, config.cv.num_folds, config.seed + r)
                for r in range(config.cv.repeats)]
  return by, {s.key: [a[s.key] for a in per_repeat] for s in sorted(songs, key=lambda s: s.key)}


def load_or_assign_folds(config: ml_collections.ConfigDict, songs: Sequence[Song],
                         path: str, write: bool = True) -> dict[str, Any]:
  """``folds.json``: read back when present (refusing other settings or songs), else made.

  Refusing, rather than re-assigning, keeps every finished fold's test songs
  disjoint from the others' and the whole run one partition.
  """
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      record = json.load(f)
    _check_record(record, config, songs, path)
    logging.info('cv: using the fold assignment recorded in %s (%d songs, by %s).', path,
                 len(record['folds']), record['fold_unit'])
    return record
  by, folds = assign_folds(config, songs)
  record = {'settings': cv_settings(config), 'fold_unit': by,
            'source': {'source': config.data.source, 'root': config.data.root,
                       'manifest': config.data.manifest},
            'num_songs': len(folds), 'folds': folds}
  if write:
    checksummed_files.write_json(path, record)
  logging.info('cv: %d songs in %d folds x %d repeat(s) by %s, recorded in %s.',
               len(folds), config.cv.num_folds, config.cv.repeats, by, path)
  return record


def _check_record(record: dict[str, Any], config: ml_collections.ConfigDict,
                  songs: Sequence[Song], path: str) -> None:
  """Refuses a resume whose settings or usable songs differ from the recorded ones."""
  now = cv_settings(config)
  diffs = [f'{k}: recorded {record["settings"].get(k)!r}, now {v!r}'
           for k, v in now.items() if record['settings'].get(k) != v]
  if diffs:
    raise ConfigError(
        f'{path} was made with other cross-validation settings:\n  ' + '\n  '.join(diffs)
        + '\nPass the recorded values (config.cv.*, config.seed) or use a new --workdir.')
  recorded, current = set(record['folds']), {s.key for s in songs}
  if recorded != current:
    added, gone = sorted(current - recorded), sorted(recorded - current)
    raise DataError(
        f'The usable songs differ from those {path} assigned to folds ({len(added)} new, '
        f'e.g. {added[:3]}; {len(gone)} gone or now unreadable, e.g. {gone[:3]}): finished '
        'folds were tested on the old set. Restore the data, or use a new --workdir for '
        'the new set.')


def plan_runs(config: ml_collections.ConfigDict, songs: Sequence[Song],
              record: dict[str, Any], cv_dir: str) -> list[FoldRun]:
  """Every (repeat, fold) run with its split, computed up front.

  A fold whose training part would give no validation songs is refused here,
  before any training, unless none were asked for (``validation_fraction=0``).
  """
  units = songs if record['fold_unit'] == 'group' else splits.ungrouped(songs)
  s = record['settings']
  runs = []
  for r in range(s['repeats']):
    folds = {key: f[r] for key, f in record['folds'].items()}
    for k in range(s['num_folds']):
      split = splits.fold_split(units, folds, k, s['validation_fraction'], s['seed'] + r)
      if not split.validation and s['validation_fraction'] > 0:
        raise ConfigError(
            f'config.cv.validation_fraction={s["validation_fraction"]} leaves fold {k} of '
            f'repeat {r} ({len(split.train)} training songs) without validation songs: '
            'raise it, lower config.cv.num_folds, or add songs.')
      runs.append(FoldRun(repeat=r, fold=k, seed=s['seed'] + r, split=split,
                          workdir=os.path.join(cv_dir, f'fold_{r}_{k}')))
  return runs


def split_file_content(run: FoldRun, fold_unit: str) -> dict[str, Any]:
  """``split.json``: the run's song keys per side, for ``config.data.split='file'``."""
  return {'by': fold_unit,
          **{side: [s.key for s in songs] for side, songs in run.split.as_dict().items()},
          'info': {'cv_repeat': run.repeat, 'cv_fold': run.fold, 'cv_seed': run.seed,
                   'folds_file': os.path.join(os.path.dirname(run.workdir), FOLDS_FILE)}}


def write_split_file(run: FoldRun, fold_unit: str) -> str:
  """Writes the run's ``split.json`` once; a different existing one is refused.

  The run may have trained on the existing one already: silently replacing it
  would resume a checkpoint on other songs.
  """
  path = os.path.join(run.workdir, SPLIT_FILE)
  content = split_file_content(run, fold_unit)
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      existing = json.load(f)
    if existing != content:
      raise DataError(
          f'{path} differs from the split derived from {FOLDS_FILE} now: the run in '
          f'{run.workdir} was made from another fold assignment. Use a new --workdir.')
    return path
  os.makedirs(run.workdir, exist_ok=True)
  checksummed_files.write_json(path, content)
  return path


def fold_run_config(config: ml_collections.ConfigDict, run: FoldRun) -> ml_collections.ConfigDict:
  """The fold's training config: the cv's, with its seed and explicit split file."""
  c = config.copy_and_resolve_references()
  with c.unlocked():
    c.seed = run.seed
    c.data.split = 'file'
    c.data.split_file = os.path.join(run.workdir, SPLIT_FILE)
    if not run.split.validation:  # nothing carved from train: a refit on all of it
      c.data.validation_fraction = 0.0
  return c


# ----------------------------------------------------------------------------
# Scores and the summary.


def read_done(fold_dir: str) -> dict[str, Any] | None:
  """The fold's scores when it was trained and evaluated, else None."""
  path = os.path.join(fold_dir, DONE_FILE)
  if not os.path.exists(path):
    return None
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def fold_scores(run: FoldRun, report: dict[str, Any]) -> dict[str, Any]:
  """The numbers of one fold's eval report that the summary uses (``cv_fold.json``)."""
  if report.get('split') != 'test':
    raise DataError(f'{run.name}: evaluated on {report.get("split")!r}, not its test fold')
  return {'repeat': run.repeat, 'fold': run.fold, 'seed': run.seed, 'workdir': run.name,
          'test_songs': int(report['num_songs']),
          'test_segments': int(report['num_segments']),
          'song_accuracy': float(report['song']['accuracy']),
          'segment_accuracy': float(report['segment']['accuracy']),
          'song_macro_f1': float(report['song']['macro_f1']),
          'segment_macro_f1': float(report['segment']['macro_f1']),
          'song_vote_accuracy': float(report['song']['vote_accuracy']),
          'checkpoint_step': int(report['checkpoint']['step']),
          'genres': list(report['genres']),
          'song_confusion_matrix': report['song']['confusion_matrix']}


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
  """Mean and sample sd (ddof 1; None for one value) of fold scores."""
  v = np.asarray(values, dtype=float)
  return {'mean': float(v.mean()) if len(v) else None,
          'sd': float(v.std(ddof=1)) if len(v) > 1 else None,
          'min': float(v.min()) if len(v) else None,
          'max': float(v.max()) if len(v) else None, 'n': int(len(v))}


def summarize(rows: Sequence[dict[str, Any]], record: dict[str, Any], runs_total: int,
              workdir: str) -> dict[str, Any]:
  """Per-fold rows, mean ± sd over folds x repeats, the pooled song confusion matrix (pure)."""
  genres = rows[0]['genres'] if rows else []
  pooled = (np.sum([np.asarray(r['song_confusion_matrix'], np.int64) for r in rows], axis=0)
            if rows else np.zeros((0, 0), np.int64))
  total = int(pooled.sum())
  return {
      'workdir': workdir,
      'settings': record['settings'],
      'fold_unit': record['fold_unit'],
      'num_songs': record['num_songs'],
      'genres': genres,
      'complete': len(rows) == runs_total,
      'runs_done': len(rows),
      'runs_total': runs_total,
      'metrics': {m: mean_sd([r[m] for r in rows]) for m in METRICS},
      'pooled': {'songs': total,
                 'song_accuracy': float(np.trace(pooled) / total) if total else None,
                 'song_confusion_matrix': pooled.tolist()},
      'folds': [{k: v for k, v in r.items() if k not in ('song_confusion_matrix', 'genres')}
                for r in rows],
  }


def _pct(x: float | None) -> str:
  return '-' if x is None else f'{100 * x:.1f}%'


def _mean_sd(stats: dict[str, Any], pct: bool = True) -> str:
  fmt = _pct if pct else (lambda x: '-' if x is None else f'{x:.3f}')
  return f"{fmt(stats['mean'])} ± {fmt(stats['sd'])}"


def format_short(summary: dict[str, Any]) -> str:
  """The stdout lines: what was run and the headline mean ± sd."""
  s, m = summary['settings'], summary['metrics']
  lines = [f"cross-validation: {s['num_folds']} folds x {s['repeats']} repeat(s) by "
           f"{summary['fold_unit']}, {summary['num_songs']} songs "
           f"({summary['runs_done']} of {summary['runs_total']} runs done)"]
  for key in ('song_accuracy', 'segment_accuracy'):
    lines.append(f'  {_LABELS[key]:<18}{_mean_sd(m[key])}  (mean ± sd over runs)')
  lines.append(f"  {'song macro-F1':<18}{_mean_sd(m['song_macro_f1'], pct=False)}")
  return '\n'.join(lines)


def format_markdown(summary: dict[str, Any]) -> str:
  """``summary.md``: settings, mean ± sd, per-fold table, pooled confusion matrix."""
  s, m = summary['settings'], summary['metrics']
  genres = summary['genres']
  out = [
      f"# Cross-validation of `{summary['workdir']}`", '',
      f"- {s['num_folds']} folds x {s['repeats']} repeat(s), by {summary['fold_unit']} "
      f"(config.cv.by={s['by']}), stratified by genre; seed {s['seed']} (+ repeat)",
      f"- {summary['num_songs']} songs, {len(genres)} genres"
      + (f' (chance {_pct(1 / len(genres))})' if genres else ''),
      f"- validation: {s['validation_fraction']:g} of each run's training songs",
      f"- runs done: {summary['runs_done']} of {summary['runs_total']}"
      + ('' if summary['complete'] else ' (incomplete: run the same command to finish)'), '',
      '| score | mean ± sd | min | max |', '|---|---|---|---|',
  ]
  for key in METRICS:
    st = m[key]
    pct = 'accuracy' in key
    fmt = _pct if pct else (lambda x: '-' if x is None else f'{x:.3f}')
    out.append(f'| {_LABELS[key]} | {_mean_sd(st, pct)} | {fmt(st["min"])} | '
               f'{fmt(st["max"])} |')
  out += ['', 'sd: sample standard deviation over all runs (folds x repeats).', '',
          '## Per run', '',
          '| repeat | fold | test songs | song accuracy | segment accuracy | song macro-F1 '
          '| segment macro-F1 | checkpoint step | workdir |',
          '|---|---|---|---|---|---|---|---|---|']
  for r in summary['folds']:
    out.append(f"| {r['repeat']} | {r['fold']} | {r['test_songs']} | "
               f"{_pct(r['song_accuracy'])} | {_pct(r['segment_accuracy'])} | "
               f"{r['song_macro_f1']:.3f} | {r['segment_macro_f1']:.3f} | "
               f"{r['checkpoint_step']} | `{r['workdir']}` |")
  p = summary['pooled']
  if genres:
    out += ['', f"## Confusion matrix (songs, pooled over all test folds: {p['songs']} "
            f"song tests, accuracy {_pct(p['song_accuracy'])})", '',
            '![pooled song confusion matrix](confusion_matrix.png)', '']
    out += eval_format.md_confusion(p['song_confusion_matrix'], genres)
  out += ['', 'Per run: `fold_<repeat>_<fold>/eval/report.md` and `predictions.npz`; the '
          'fold assignment: `folds.json`.', '']
  return '\n'.join(out)


def write_summary(cv_dir: str, summary: dict[str, Any]) -> None:
  """summary.json, summary.md and the pooled confusion-matrix plot, each replaced whole."""
  checksummed_files.write_json(os.path.join(cv_dir, 'summary.json'), summary)
  with atomic.replaced_when_written(os.path.join(cv_dir, 'summary.md')) as f:
    f.write(format_markdown(summary))
  if summary['genres']:
    s = summary['settings']
    reporting.plot_confusion_matrix(
        np.asarray(summary['pooled']['song_confusion_matrix']), summary['genres'],
        os.path.join(cv_dir, 'confusion_matrix.png'),
        title=f"test songs of {s['num_folds']} folds x {s['repeats']} repeat(s)")
