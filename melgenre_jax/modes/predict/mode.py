"""``--mode=predict``: classify files, folders and whole libraries with a trained workdir."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging

from melgenre_jax import calibration
from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import reporting
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import NothingClassifiedError
from melgenre_jax.errors import UserError
from melgenre_jax.modes import exported_model
from melgenre_jax.modes.predict import classify
from melgenre_jax.modes.predict import genre_tags
from melgenre_jax.modes.predict import inputs
from melgenre_jax.modes.predict import output as out_lib
from melgenre_jax.modes.predict import stream
from melgenre_jax.runtime import parallel

PREDICTIONS_DIR = workdir_lib.PREDICTIONS
WRITE_TAGS = ('off', 'dry_run', 'apply', 'keep')


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  """What predict classifies and where the answers go: its flags, built once in
  modes/dispatch.py and passed down as the Flax examples pass ``config, workdir``.

  ``paths``: files, folders and wildcards. ``reading``: how each file is read
  and answered (``--top_k``, ``--hop_seconds``, ``--offset_seconds``,
  ``--max_seconds``, ``--min_confidence``). ``model_dir``: an export folder to
  predict with instead of a workdir's checkpoint (``--model``).
  """

  paths: tuple[str, ...] = ()
  reading: stream.Options = stream.Options()
  step: int | None = None  # None: the best checkpoint
  output: str = 'text'
  output_file: str | None = None  # None: WORKDIR/predictions/predictions.{json,csv}
  plot: bool = False
  write_tags: str = 'off'
  model_dir: str | None = None
  decode_workers: int = stream.DEFAULT_DECODE_WORKERS


def default_output_file(workdir: str, output: str) -> str:
  return os.path.join(workdir, PREDICTIONS_DIR, f'predictions.{output}')


def check_flags(options: PredictOptions) -> None:
  """Refuses an output, output file or --write_tags value predict cannot use, or no input."""
  output, write_tags = options.output, options.write_tags
  if output not in out_lib.OUTPUTS:
    raise ConfigError(f"--output={output!r}: allowed values are "
                      f"{', '.join(repr(o) for o in out_lib.OUTPUTS)}.")
  if not options.paths:
    raise ConfigError('--mode=predict needs audio files or folders: give them after the '
                      'flags (main.py --workdir W --mode predict song.mp3 my_folder/) or '
                      'with --audio (repeated or comma-separated).')
  if options.output_file and output == 'text':
    raise ConfigError('--output_file is where --output csv or json is written; text is '
                      'printed (add --output csv or --output json).')
  if write_tags not in WRITE_TAGS:
    raise ConfigError(f'--write_tags={write_tags!r}: allowed values are '
                      f"{', '.join(WRITE_TAGS)} (a bare --write_tags means dry_run).")


def check_genre_flags(config: ml_collections.ConfigDict, min_confidence: float,
                      write_tags: str) -> None:
  """Refuses the genre-only flags for a multi-label model (one genre per song)."""
  if write_tags != 'off':
    config_checks.check_genre_task(
        config, f'--write_tags={write_tags} writes one genre into each file',
        'drop --write_tags (the tags are in the text, JSON and CSV output)')
  if min_confidence > 0:
    config_checks.check_genre_task(
        config, f'--min_confidence={min_confidence:g} marks songs whose top genre is unsure',
        'drop it and set the tag threshold with --config.multilabel.threshold instead')


class Interrupted(UserError):
  """Ctrl-C during predict: what was classified is kept; the message says where and what next."""


@dataclasses.dataclass
class _Progress:
  """What a run has done so far, for the line an interruption ends with."""

  results: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  total: int | None = None  # files this run classifies (None: not yet known)
  out_path: str | None = None
  written: bool = False  # the JSON report or text output holds ``results``
  csv_header: list[str] | None = None  # --output csv: the log's columns ...
  csv_rows_before: int = 0  # ... and its rows when the run started

  def classified(self) -> int:
    """Files answered by this run: the CSV's new rows (exact whenever Ctrl-C came), or results."""
    if self.csv_header is None or not os.path.exists(self.out_path):
      return len(self.results)
    return len(out_lib.read_csv(self.out_path, self.csv_header)[0]) - self.csv_rows_before


def predict_paths(config: ml_collections.ConfigDict | None, workdir: str | None,
                  options: PredictOptions) -> list[dict[str, Any]]:
  """Classifies ``options.paths`` with the workdir's best checkpoint (or ``options.step``).

  With ``options.model_dir`` (an export folder: modes/exported_model.py; no
  workdir or checkpoint needed) ``config`` is the folder's and ``workdir``
  only the default place of the output files (None: the current directory).

  ``options.output``: 'text' prints the answers; 'json' writes one report at
  the end (``output_file``, default ``WORKDIR/predictions/predictions.json``);
  'csv' appends a row per file as it finishes (default
  ``WORKDIR/predictions/predictions.csv``) and skips the files whose row is
  already there. Returns the results of the files classified by this call
  (failures carry ``ok=False`` and ``reason``).

  Raises:
    NothingClassifiedError: no input file has an answer.
    Interrupted: Ctrl-C; every answer so far is kept (the CSV's rows; the
      JSON report or the text printed with the files done).
  """
  progress = _Progress()
  try:
    return _predict(config, workdir, options, progress)
  except KeyboardInterrupt:  # before the first file, or while the answers were written
    raise Interrupted(_interrupted_line(progress, options.output)) from None


def _predict(config: ml_collections.ConfigDict | None, workdir: str | None,
             options: PredictOptions, progress: _Progress) -> list[dict[str, Any]]:
  check_flags(options)
  output, reading, write_tags = options.output, options.reading, options.write_tags
  if output != 'text':  # before any work: a path that cannot be written is one line
    out_lib.check_output_file(os.path.abspath(options.output_file or default_output_file(
        workdir or os.getcwd(), output)), output, reading.top_k)
  model_dir = options.model_dir
  model = exported_model.load_export_dir(model_dir) if model_dir else None
  config = model.config if model is not None else config
  stream.check_options(reading, config)
  check_genre_flags(config, reading.min_confidence, write_tags)
  workdir = os.path.abspath(workdir or os.getcwd())
  if model is None:
    config_checks.check_workdir_compatible(config, workdir)
  jobs = stream.file_jobs(options.paths)
  if model is None:
    model = inference.load_for_inference(config, workdir, options.step)
  chief = jax.process_index() == 0
  out_path = os.path.abspath(options.output_file or default_output_file(workdir, output))
  out_dir = os.path.join(workdir, PREDICTIONS_DIR)

  top_k = reading.top_k
  header = out_lib.csv_header(top_k)
  settings = out_lib.run_settings(model.step, reading.offset_seconds, reading.max_seconds,
                                  reading.hop(config))
  todo, answered_before = jobs, 0
  if output == 'csv':
    todo, answered_before, progress.csv_rows_before = _resume(out_path, header, settings, jobs,
                                                              repair=chief)
    progress.csv_header = header
    parallel.barrier('predict_csv_read')  # every process skips the same files
  progress.total, progress.out_path = len(todo), out_path

  if chief and options.plot:
    os.makedirs(out_dir, exist_ok=True)
  plots: set[str] = set()
  results, tag_actions = progress.results, []
  interrupted = False
  start = time.monotonic()
  try:
    with contextlib.ExitStack() as stack:
      log = (stack.enter_context(out_lib.CsvLog(out_path, header))
             if chief and output == 'csv' else None)
      answers = stack.enter_context(contextlib.closing(
          classify.iter_results(model, todo, reading, options.decode_workers)))
      for r in reporting.progress_bar(answers, total=len(todo), desc='predict (files)',
                                      enabled=bool(config.get('progress_bar', True))):
        if chief and options.plot and r['ok']:
          r['plot'] = _plot(r, out_dir, plots, model, config)
        if chief and write_tags != 'off':
          tag_actions.append(_tag(r, write_tags))
        if log is not None:
          log.append(out_lib.csv_row(r, top_k, settings))
          # The CSV holds the answer; a library's timelines need not stay in memory.
          r.pop('timeline', None)
          r.pop('segment_probabilities', None)
        results.append(r)
  except KeyboardInterrupt:  # the files done are kept; the CSV log is closed (synced) above
    interrupted = True
  seconds = time.monotonic() - start

  failed = [r for r in results if not r['ok']]
  if not interrupted:  # else the one line below says it all
    for r in failed:
      logging.warning('Skipped %s: %s', r['path'], r['reason'])
    uncertain = sum(r['status'] == 'uncertain' for r in results)
    logging.info('Classified %d file(s) in %.1f s (%.2f files/s): %d skipped, %d uncertain.',
                 len(results) - len(failed), seconds, len(results) / max(seconds, 1e-9),
                 len(failed), uncertain)
  if chief:
    if output == 'json':
      os.makedirs(os.path.dirname(out_path), exist_ok=True)
      head = json_header(workdir, model, config, reading)
      out_lib.write_json(out_path, {**head, 'interrupted': True} if interrupted else head,
                         results)
    if output == 'text':
      print(out_lib.format_text(results))  # CLI output
    elif not interrupted:
      print(out_path)  # CLI output
    if write_tags != 'off':
      print(genre_tags.format_actions(  # CLI output
          tag_actions, applied=write_tags != 'dry_run',
          flag=genre_tags.KEEP_HINT if write_tags == 'keep' else genre_tags.APPLY_HINT))
  progress.written = True
  if interrupted:
    raise Interrupted(_interrupted_line(progress, output))
  if len(failed) == len(results) and not answered_before:
    raise NothingClassifiedError(
        'No file could be classified:\n  ' + '\n  '.join(
            f"{r['path']}: {r['reason']}" for r in failed))
  return results


def _interrupted_line(progress: _Progress, output: str) -> str:
  """What an interrupted run kept and what to do next, in one line."""
  if progress.total is None:
    return 'before any file was classified; nothing was written: run the same command again.'
  done = f'{progress.classified()} of {progress.total} file(s) classified'
  again = 'run the same command again to classify them all (--output csv resumes instead)'
  if output == 'csv':  # every row is in the log as soon as its file is done
    return (f'{done}, their rows are in {progress.out_path}; run the same command again to '
            'continue (the files already in it are skipped).')
  if not progress.written:
    return f'{done}, nothing was written: {again}.'
  if output == 'json':
    return f'{done}, their results are in {progress.out_path}; {again}.'
  return f'{done} (printed above); {again}.'


def _resume(path: str, header: list[str], settings: dict[str, str],
            jobs: list[stream.FileJob], repair: bool
            ) -> tuple[list[stream.FileJob], int, int]:
  """The jobs without a standing row in the CSV, how many of the others were answered, and
  how many rows the CSV holds."""
  rows, count = out_lib.open_csv_log(path, header, repair=repair)
  todo, answered = [], 0
  for job in jobs:
    row = rows.get(out_lib.job_key(job.stamp, settings))
    if row is None:
      todo.append(job)
    elif row['status'] != 'skipped':
      answered += 1
  done = len(jobs) - len(todo)
  if count:
    logging.info('%s holds %d row(s): skipping %d of %d file(s) already in it (same path, '
                 'size, modification time, checkpoint and excerpt); classifying the other %d.',
                 path, count, done, len(jobs), len(todo))
  return todo, answered, count


def _tag(r: dict[str, Any], write_tags: str) -> genre_tags.TagAction:
  """Plans (and unless ``dry_run`` writes) one file's genre tag, before its CSV row.

  ``keep`` leaves a genre already in the file alone (``genre_tags.plan``).

  Writing moves the file's size and mtime, so the row gets the new stamp:
  otherwise every tagged file would look changed to the next resumed run.
  """
  action = genre_tags.plan([r], keep_existing=write_tags == 'keep')[0]
  if write_tags in ('apply', 'keep') and action.action == 'write':
    action = genre_tags.apply([action])[0]
    if action.action == 'write':
      now = inputs.stamp(r['path'])
      r['size_bytes'], r['mtime'] = now.size_bytes, now.mtime
  r['tag'] = {'action': action.action, 'old_genre': action.old_genre,
              'new_genre': action.new_genre, 'reason': action.reason}
  return action


def _plot(r: dict[str, Any], out_dir: str, used: set[str],
          model: inference.InferenceModel | exported_model.ExportedModel,
          config: ml_collections.ConfigDict) -> str:
  path = os.path.join(out_dir, out_lib.plot_name(r['path'], used))
  probs = np.asarray(r['segment_probabilities'])
  reporting.plot_genre_timeline(
      probs if model.multilabel else calibration.apply_temperature(
          probs, float(model.temperature)),
      [x['start_seconds'] for x in r['timeline']], float(config.audio.segment_seconds),
      model.genres, path, title=f"{os.path.basename(r['path'])}: {r['genre'] or 'uncertain'}")
  return path


def json_header(workdir: str | None,
                model: inference.InferenceModel | exported_model.ExportedModel,
                config: ml_collections.ConfigDict, options: stream.Options) -> dict[str, Any]:
  """The JSON report's fields around ``results`` (serve's answers carry them too)."""
  exported = isinstance(model, exported_model.ExportedModel)
  return {'workdir': None if exported else workdir,
          **({'model': model.export_dir} if exported else {}),
          'checkpoint_step': model.step, 'genres': model.genres,
          'sample_rate': int(config.audio.sample_rate),
          'segment_seconds': float(config.audio.segment_seconds),
          'segment_hop_seconds': float(config.audio.segment_hop_seconds),
          'hop_seconds': options.hop(config), 'offset_seconds': options.offset_seconds,
          'max_seconds': options.max_seconds,
          'temperature': float(model.temperature),
          'min_confidence': options.min_confidence,
          'task': config.task,
          **({'threshold': float(config.multilabel.threshold)} if model.multilabel else {})}
