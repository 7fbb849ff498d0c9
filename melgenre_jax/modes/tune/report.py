"""What a search leaves for people: trials.csv, trials.md, trials.png, best_config.py.

Every report is built from the whole study, not from this process's trials, so
with several machines on one study the last to write has the full table.
"""

from __future__ import annotations

import csv
import json
import math
import os
import pprint
from collections.abc import Sequence
from typing import Any

import ml_collections
import optuna
from optuna.trial import TrialState

from melgenre_jax import reporting
from melgenre_jax.runtime import atomic
from melgenre_jax.modes.tune.space import apply_params
from melgenre_jax.modes.tune.space import config_values
from melgenre_jax.modes.tune.space import LR_SCALE
from melgenre_jax.modes.tune.study import Settings


def write_reports(study: optuna.Study, config: ml_collections.ConfigDict, s: Settings,
                  config_path: str | None = None, plot: bool = True) -> dict[str, Any]:
  """Tables, best config and (``plot``) the plot, from the whole study.

  Called after every trial without the plot (matplotlib costs seconds on a
  busy machine), and with it when the search ends or stops.
  """
  os.makedirs(s.tune_dir, exist_ok=True)
  rows = trial_rows(study)
  write_csv(rows, os.path.join(s.tune_dir, 'trials.csv'))
  summary: dict[str, Any] = {'trials': len(rows), 'tune_dir': s.tune_dir,
                             'best_trial': None}
  complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
  header = f'# Trials of study {s.study_name!r}\n\n'
  if complete:
    best = max(complete, key=lambda t: t.value)  # first of equals: the earliest
    best_params = config_values(s.space, best.params)
    path = os.path.join(s.tune_dir, 'best_config.py')
    with atomic.replaced_when_written(path) as f:
      f.write(best_config_source(config, best_params, best, s.tune_dir, config_path))
    header += (f'Best: trial {best.number}, validation song accuracy {best.value:.4f}, '
               f'params {json.dumps(best.params)}\n\nConfig: `{path}`\n\n')
    summary.update(best_trial=best.number, best_value=best.value,
                   best_params=best_params, best_config=path)
  with open(os.path.join(s.tune_dir, 'trials.md'), 'w') as f:
    f.write(header + markdown_table(rows))
  if plot:
    plot_trials(rows, os.path.join(s.tune_dir, 'trials.png'))
  summary['table'] = markdown_table(rows)
  return summary


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
  """One dict per trial, for the tables and the plot.

  ``score`` is the objective for COMPLETE trials and the best epoch reported
  before pruning for PRUNED ones (for plotting; they never win).
  """
  trials = study.get_trials(deepcopy=False)
  names: list[str] = []
  for t in trials:
    names += [n for n in t.params if n not in names]
  return [_row(t, names) for t in trials]


def _row(t: optuna.trial.FrozenTrial, names: Sequence[str]) -> dict[str, Any]:
  if t.state == TrialState.COMPLETE:
    score = t.value
  elif t.intermediate_values:
    score = max(t.intermediate_values.values())
  else:
    score = None
  duration = (t.datetime_complete - t.datetime_start).total_seconds() if (
      t.datetime_complete and t.datetime_start) else None
  row = {'number': t.number, 'state': t.state.name, 'score': score,
         'epochs': t.user_attrs.get('epochs')}
  row.update({n: t.params.get(n) for n in names})
  row.update({'retry_of': t.user_attrs.get('retry_of'),
              'workdir': t.user_attrs.get('workdir'), 'seconds': duration})
  return row


def _cell(v: Any) -> str:
  if v is None:
    return ''
  if isinstance(v, float):
    return f'{v:.4f}' if abs(v) >= 1e-3 or v == 0 else f'{v:.3g}'
  return str(v)


def markdown_table(rows: Sequence[dict]) -> str:
  if not rows:
    return '(no trials yet)\n'
  keys = list(rows[0])
  lines = ['| ' + ' | '.join(keys) + ' |', '|' + '---|' * len(keys)]
  lines += ['| ' + ' | '.join(_cell(r[k]) for k in keys) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def write_csv(rows: Sequence[dict], path: str) -> None:
  with open(path, 'w', newline='') as f:
    if rows:
      writer = csv.DictWriter(f, fieldnames=list(rows[0]))
      writer.writeheader()
      writer.writerows(rows)


def plot_trials(rows: Sequence[dict], path: str) -> None:
  """Score per trial: complete dots, pruned crosses, failed ticks, best so far."""
  plt = reporting.plt  # matplotlib with reporting's headless (Agg) set-up
  fig, ax = plt.subplots(figsize=(7, 4))
  for state, marker, color, label in (('COMPLETE', 'o', 'tab:blue', 'complete'),
                                      ('PRUNED', 'x', 'tab:orange', 'pruned (best epoch)')):
    pts = [(r['number'], r['score']) for r in rows
           if r['state'] == state and r['score'] is not None]
    if pts:
      ax.scatter(*zip(*pts), marker=marker, color=color, label=label, zorder=3)
  failed = [r['number'] for r in rows if r['state'] == 'FAIL']
  if failed:
    ax.scatter(failed, [0.0] * len(failed), marker='v', color='tab:red',
               label='failed / retried', zorder=3)
  xs, ys = _best_so_far(rows)
  if xs:
    ax.step(xs, ys, where='post', color='tab:green', label='best so far')
  ax.set_xlabel('trial')
  ax.set_ylabel('validation song accuracy')
  ax.set_ylim(-0.03, 1.03)
  ax.grid(alpha=0.3)
  if rows:
    ax.legend(loc='best', fontsize=8, framealpha=0.8)
  fig.tight_layout()
  reporting.save_figure(fig, path, dpi=100)
  plt.close(fig)


def _best_so_far(rows: Sequence[dict]) -> tuple[list[int], list[float]]:
  """The best COMPLETE score after each trial, from the first COMPLETE one on."""
  best, xs, ys = -math.inf, [], []
  for r in rows:
    if r['state'] == 'COMPLETE' and r['score'] is not None:
      best = max(best, r['score'])
    if best > -math.inf:
      xs.append(r['number'])
      ys.append(best)
  return xs, ys


def best_config_source(config: ml_collections.ConfigDict, best_params: dict[str, Any],
                       trial: optuna.trial.FrozenTrial, tune_dir: str,
                       config_path: str | None) -> str:
  """A self-contained config file: the whole search config with the best params.

  The config is embedded as a literal (not re-loaded from the original file),
  so command-line overrides of the search are kept and the file still works
  if the original config changes.
  """
  best = apply_params(config, best_params)
  literal = pprint.pformat(best.to_dict(), indent=1, width=100, sort_dicts=True)
  params = pprint.pformat(best_params, indent=1, width=100, sort_dicts=True)
  origin = f'{config_path} (+ command-line overrides)' if config_path else (
      'the search config (command-line overrides included)')
  return f'''"""Best trial of the search in {tune_dir}: trial {trial.number}, \
validation song accuracy {trial.value:.4f}.

Written by melgenre_jax.modes.tune from {origin}, with
BEST_PARAMS applied ('{LR_SCALE}' already multiplies schedule.stage_*_lrs).
Train it with:

  python main.py --config {os.path.join(tune_dir, 'best_config.py')} --workdir runs/best
"""

import ml_collections

BEST_PARAMS = {params}

CONFIG = {literal}


def get_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(CONFIG)
'''
