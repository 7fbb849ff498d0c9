"""``export/MODEL_CARD.md``: what the exported model is and how well it did, from the run's records.

The card is written by ``--mode=export`` from the files the workdir already
holds, so every number in it is one the run measured: ``dataset.json`` and
``data_summary.json`` (labels, songs, split), ``eval/report.json`` (test
metrics and their 95% intervals, when ``--mode=eval`` ran), the contract
(input format, calibration), ``config.json``, and ``imported_from.json`` or
``init_from.json`` (where pretrained weights came from). Nothing is guessed:
what is missing is said to be missing.

``read_run`` gathers the records; ``card`` and the section functions are pure
(dicts in, Markdown out), so a test can check them on any record.
"""

from __future__ import annotations

import json
import os
from typing import Any

from melgenre_jax import workdir as workdir_lib

# Pretrained sources the package can import, and what their weights are under.
MUSICNN_SOURCE = ('musicnn 0.1.0 wheel (PyPI, github.com/jordipons/musicnn), by Jordi Pons '
                  'and Xavier Serra; code and weights under the ISC licence')
NOT_EVALUATED = 'Not evaluated: run --mode=eval on the workdir, then export again'
# What the musicnn taggers were trained on (Pons and Serra, musicnn, 2019).
MUSICNN_DATA = {'MSD': 'the Million Song Dataset with its Last.fm tags (top 50)',
                'MTT': 'MagnaTagATune (top 50 tags)'}


def _read_json(path: str) -> Any:
  """The file's JSON, or None when it is absent or unreadable (the card says so)."""
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def read_run(workdir: str, contract: dict[str, Any], command: str) -> dict[str, Any]:
  """Everything the card is written from (absent records are None)."""
  names = {'dataset': workdir_lib.DATASET, 'data_summary': workdir_lib.DATA_SUMMARY,
           'report': os.path.join(workdir_lib.EVAL, workdir_lib.EVAL_REPORT),
           'config': workdir_lib.CONFIG, 'imported_from': workdir_lib.IMPORTED_FROM,
           'init_from': workdir_lib.INIT_FROM}
  run = {k: _read_json(os.path.join(workdir, v)) for k, v in names.items()}
  return {**run, 'contract': contract, 'command': command, 'workdir': workdir}


def _pct(x: float | None) -> str:
  return 'n/a' if x is None else f'{100 * float(x):.1f}%'


def _ci(ci: Any) -> str:
  return f' (95% CI {_pct(ci[0])} to {_pct(ci[1])})' if ci and len(ci) == 2 else ''


def overview(run: dict[str, Any]) -> list[str]:
  """Title, task and labels."""
  c = run['contract']
  multilabel = c.get('task') == 'multilabel'
  kind = 'tags' if multilabel else 'genres'
  task = ('Multi-label music tagging: an independent probability per tag' if multilabel else
          'Music genre classification: one probability distribution over the genres')
  family = (run['config'] or {}).get('model', {}).get('name', 'crnn')
  return ['# Model card', '',
          f"melgenre_jax {family} model, checkpoint step {c.get('checkpoint_step')}, "
          f"exported {c.get('created')}.", '',
          '## Task', '', f'{task}, per song (the mean of its segments) and per segment.', '',
          f"## Labels ({len(c['genres'])} {kind})", '', ', '.join(c['genres']), '']


def _onnx_note(onnx: dict[str, Any] | None) -> str:
  """model.onnx's converter and its measured distance from JAX (contract's functions.onnx)."""
  if not onnx:
    return ''
  diffs = ', '.join(f'{k} {v:.1e}' for k, v in onnx['max_abs_difference'].items())
  return (f"; model.onnx (opset {onnx['opset']}, {onnx['converter']}, outputs "
          f"{', '.join(onnx['outputs'])}; max |ONNX - JAX| {diffs} under onnxruntime on "
          f"{onnx.get('checked_on', 'test inputs')})")


def input_format(c: dict[str, Any]) -> list[str]:
  """Sample rate, segment, features and the files that take them."""
  f = c.get('features', {})
  return ['## Input format', '',
          f"- Audio: mono, {c['sample_rate']} Hz, cut into segments of "
          f"{c['segment_seconds']:g} s ({c['segment_samples']} samples), hop "
          f"{c['segment_hop_seconds']:g} s; {c.get('song_aggregation', '')}.",
          f"- Model input: {c['input']['kind']} {c['input']['shape']} float32: "
          f"{c['input']['description']}.",
          f"- Features: log-mel, {f.get('n_mels')} bands, n_fft {f.get('n_fft')}, hop "
          f"{f.get('hop_length')} samples, computed on {f.get('where')} "
          f"(compression {f.get('compression', 'db')}, normalize {f.get('normalize')}).",
          f"- Files: model.stablehlo (jax.export, JAX {c.get('jax_version')}, platforms "
          f"{', '.join(c.get('platforms', []))})"
          f"{_onnx_note(c.get('functions', {}).get('onnx'))}; contract.json describes both.",
          '']


def training_data(run: dict[str, Any]) -> list[str]:
  """Songs, genres, groups and the split protocol."""
  s, d = run['data_summary'], run['dataset'] or {}
  if run['imported_from'] and not s:
    model = str(run['imported_from'].get('model', ''))
    data = MUSICNN_DATA.get(model.split('_')[0], 'not recorded')
    return ['## Training data', '', 'Not trained here: the weights were imported (see '
            f'Pretrained weights). The original was trained on {data}; this package '
            'never saw that data.', '']
  if not s:
    return ['## Training data', '', 'No data_summary.json in the workdir: not recorded.', '']
  split = s.get('split', {})
  lines = ['## Training data', '',
           f"- Source: {s.get('source')}{' ' + s['root'] if s.get('root') else ''}"
           f"{', manifest ' + s['manifest'] if s.get('manifest') else ''}; "
           f"{s.get('num_songs')} songs found, {s.get('num_good')} usable, "
           f"{s.get('num_bad')} skipped as unreadable; {s.get('num_segments')} segments.",
           '- Groups: the split was made by group (e.g. artist): no group has songs in '
           'two splits.' if split.get('by') == 'group' else
           '- Groups: none recorded: each song is its own unit of the split.',
           f"- Split protocol: {split.get('name')} (seed {split.get('seed')}"
           + (', LEAKY: segments of one song in several splits' if split.get('leaky') else '')
           + ''.join(f', {k} {v}' for k, v in split.items() if k in (
               'split_file', 'num_folds', 'fold', 'validation_carved_from_train'))
           + ').', '',
           '| split | songs | segments |' + ''.join(f' {g} |' for g in d.get('genres', [])),
           '|---|---|---|' + '---|' * len(d.get('genres', []))]
  for name in ('train', 'validation', 'test'):
    part = split.get(name) or {}
    per = part.get('per_genre', {})
    lines.append(f"| {name} | {part.get('songs', 0)} | {part.get('segments', 0)} |"
                 + ''.join(f" {per.get(g, {}).get('songs', 0)} |" for g in d.get('genres', [])))
  return lines + ['', '(per-genre columns: songs)', '']


def metrics(report: dict[str, Any] | None) -> list[str]:
  """Song- and segment-level test metrics with their 95% intervals (eval/report.json)."""
  if not report:
    return ['## Test metrics', '', NOT_EVALUATED + '.', '']
  lines = ['## Test metrics', '',
           f"Split: {report.get('split')} ({report.get('num_songs')} songs, "
           f"{report.get('num_segments')} segments), checkpoint step "
           f"{report.get('checkpoint', {}).get('step')}."]
  if report.get('leaky_split'):
    lines.append('WARNING: the split is leaky (segment-level): these numbers overstate.')
  lines += [f'Warning: {w}' for w in report.get('warnings', [])]
  lines += ['', '| level | metric | value |', '|---|---|---|']
  for level in ('song', 'segment'):
    r = report.get(level, {})
    if 'accuracy' in r:
      lines.append(f"| {level} | accuracy | {_pct(r['accuracy'])}"
                   f"{_ci(r.get('accuracy_95ci'))} ({r.get('correct')}/{r.get('total')}) |")
      lines.append(f"| {level} | macro F1 | {float(r.get('macro_f1', 0)):.3f} |")
    for key in sorted(k for k in r if k.endswith('_macro')):  # multi-label: ROC-AUC, PR-AUC
      if isinstance(r[key], (int, float)):
        lines.append(f"| {level} | {key} | {float(r[key]):.3f}{_ci(r.get(key + '_95ci'))} |")
  if 'chance_accuracy' in report:
    lines.append(f"| song | chance accuracy | {_pct(report['chance_accuracy'])} |")
  return lines + ['']


def calibration(c: dict[str, Any], report: dict[str, Any] | None) -> list[str]:
  """Temperature and ECE before and after it (on validation, and on test when evaluated)."""
  cal = c.get('calibration', {})
  lines = ['## Calibration', '']
  if c.get('task') == 'multilabel':
    return lines + ['Not calibrated: tag probabilities are independent sigmoids.', '']
  if not cal.get('calibrated'):
    return lines + ['Not calibrated (temperature 1): run --mode=calibrate, then export '
                    'again.', '']
  lines.append(f"Song temperature {cal['temperature']:.4g}, fitted on "
               f"{cal.get('fitted_on')} ({cal.get('songs')} songs): song ECE "
               f"{cal.get('song_ece_before', float('nan')):.4f} before, "
               f"{cal.get('song_ece_after', float('nan')):.4f} after.")
  test = (report or {}).get('calibration')
  if test:
    for level in ('song', 'segment'):
      t = test.get(level, {})
      lines.append(f"On {report.get('split')} ({level}s): ECE {t.get('ece_before', 0):.4f} "
                   f"before, {t.get('ece_after', 0):.4f} after.")
  return lines + ['The temperature is applied to a song\'s mean probabilities '
                  '(contract.json, calibration).', '']


def weights_source(run: dict[str, Any]) -> list[str]:
  """Where pretrained weights came from, with their licence."""
  lines = ['## Pretrained weights', '']
  imported, init = run['imported_from'], run['init_from']
  if imported:
    lines.append(f"Imported with --mode=import --import_from={imported.get('import_from')}: "
                 f"{imported.get('model')} from {imported.get('package')}, licence "
                 f"{imported.get('licence')}. Source: {MUSICNN_SOURCE}.")
  if init:
    lines.append(f"Fine-tuned from {init.get('source_workdir')} (step "
                 f"{init.get('source_step')}, task {init.get('source_task')}); classifier "
                 f"head {init.get('head')}. That run's own card gives its weights' source.")
  if not (imported or init):
    lines.append('None: trained from random initialisation.')
  return lines + ['']


def config_section(config: dict[str, Any] | None) -> list[str]:
  if not config:
    return ['## Config', '', 'No config.json in the workdir.', '']
  return ['## Config', '', 'The run\'s config (also config.json in this folder):', '',
          '```json', json.dumps(config, indent=1, sort_keys=True), '```', '']


def command_section(run: dict[str, Any]) -> list[str]:
  imported = run['imported_from']
  origin = (f"The workdir was made by: python main.py --mode=import --import_from="
            f"{imported.get('import_from')} --workdir {run['workdir']}" if imported else
            'The training command is not recorded; the config below reproduces the run '
            '(python main.py --mode=train --config CONFIG --workdir W, CONFIG a file whose '
            'get_config() returns it).')
  return ['## How it was made', '',
          f"Workdir {run['workdir']}. This folder was written by:", '', '```',
          run['command'], '```', '', origin, '']


def limits(run: dict[str, Any]) -> list[str]:
  """What the data did not cover, from the records."""
  c, s = run['contract'], run['data_summary'] or {}
  lines = ['## Known limits', '',
           f"- Only these {len(c['genres'])} tags: no other tag is predicted."
           if c.get('task') == 'multilabel' else
           f"- Only these {len(c['genres'])} genres: any other music gets one of them.",
           f"- Hears {c['segment_seconds']:g} s segments at {c['sample_rate']} Hz: "
           f"nothing above {c['sample_rate'] // 2} Hz, no structure longer than a segment "
           'except through the song mean.']
  if s.get('source') == 'synthetic':
    lines.append('- Trained on synthetic songs (data.source=synthetic): it says nothing '
                 'about real music.')
  test = (s.get('split') or {}).get('test') or {}
  if s and test.get('songs', 0) < 100:
    lines.append(f"- The test split has {test.get('songs', 0)} songs: the intervals above "
                 'are wide.')
  missing = [g for g, v in (test.get('per_genre') or {}).items() if not v.get('songs')]
  if missing:
    lines.append(f"- No test songs of {', '.join(missing)}: untested there.")
  if not run['report']:
    lines.append('- Not evaluated on held-out songs (no eval/report.json).')
  if run['imported_from']:
    lines.append('- Imported weights: their training data (and its biases) are those of the '
                 'original model, not measured here.')
  lines.append('- Recordings unlike the training data (live, noisy, other eras or cultures) '
               'were not measured.')
  return lines + ['']


def card(run: dict[str, Any]) -> str:
  """The whole card as Markdown."""
  c = run['contract']
  sections = (overview(run), input_format(c), training_data(run), metrics(run['report']),
              calibration(c, run['report']), weights_source(run), limits(run),
              command_section(run), config_section(run['config']))
  return '\n'.join(line for section in sections for line in section).rstrip() + '\n'
