"""The search space of ``config.tune.space``, and the allowed search settings.

The space is a tuple of ``'FIELD=SPEC'`` strings, because dotted names cannot be
ConfigDict keys and a tuple can be replaced whole from the command line:

  FIELD  a config path ('model.dropout', 'batch_size', 'schedule.stage_ends'), or
         'lr_scale': a factor applied to every value of schedule.stage_start_lrs
         and schedule.stage_end_lrs (the schedule's shape is kept, its height
         searched).
  SPEC   uniform:LOW:HIGH        float
         loguniform:LOW:HIGH     float, sampled on a log scale (LOW > 0)
         int:LOW:HIGH[:STEP]     integer, both ends included
         logint:LOW:HIGH         integer, log scale
         choice:A|B|C            Python literals: 16|32, (64,16)|(128,32), relu|gelu

  --config.tune.space="('lr_scale=loguniform:0.3:3','model.dropout=uniform:0:0.5')"

Every bound and choice is applied to the config and checked
(``study.check_tune`` and ``config_checks.validate``, see ``search.check_space``) before any training,
so a typo fails at once.

This module imports neither Optuna nor JAX nor config_checks: ``study.check_tune``
checks ``config.tune`` with its constants and ``parse_space``.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import ml_collections

from melgenre_jax.errors import ConfigError

if TYPE_CHECKING:
  import optuna

LR_SCALE = 'lr_scale'
KINDS = ('uniform', 'loguniform', 'int', 'logint', 'choice')
SAMPLERS = ('tpe', 'random')
PRUNERS = ('median', 'halving', 'none')


@dataclasses.dataclass(frozen=True)
class Param:
  """One searched field: its config path (or 'lr_scale') and distribution.

  Choices are kept as their source text in the study (Optuna's categorical
  values must be scalars, and ``'(64,16)'`` reads well in tables) and turned
  into Python values by ``value``.
  """

  name: str
  kind: str
  low: float = 0.0
  high: float = 0.0
  step: int = 1
  choices: tuple[str, ...] = ()

  def suggest(self, trial: optuna.Trial) -> Any:
    if self.kind == 'uniform':
      return trial.suggest_float(self.name, self.low, self.high)
    if self.kind == 'loguniform':
      return trial.suggest_float(self.name, self.low, self.high, log=True)
    if self.kind == 'int':
      return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step)
    if self.kind == 'logint':
      return trial.suggest_int(self.name, int(self.low), int(self.high), log=True)
    return trial.suggest_categorical(self.name, list(self.choices))

  def value(self, raw: Any) -> Any:
    """The config value for a value stored in the study."""
    return _literal(raw) if self.kind == 'choice' else raw

  def extremes(self) -> list[Any]:
    """Values worth checking before training: both bounds, or every choice."""
    if self.kind == 'choice':
      return [self.value(c) for c in self.choices]
    if self.kind in ('int', 'logint'):
      return [int(self.low), int(self.high)]
    return [self.low, self.high]


def _literal(text: str) -> Any:
  """A Python literal, or the bare text for words like ``none`` or ``slaney``."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _spec_error(index: int, entry: str, why: str) -> ConfigError:
  return ConfigError(
      f'config.tune.space[{index}]={entry!r}: {why}. Each entry is FIELD=SPEC with '
      f'SPEC one of uniform:LOW:HIGH, loguniform:LOW:HIGH, int:LOW:HIGH[:STEP], '
      f'logint:LOW:HIGH, choice:A|B|C; FIELD a config path or {LR_SCALE!r}.')


def parse_param(entry: str, index: int = 0) -> Param:
  """Parses one ``'FIELD=SPEC'`` entry of ``config.tune.space``."""
  if not isinstance(entry, str) or '=' not in entry:
    raise _spec_error(index, entry, 'missing "="')
  name, spec = (s.strip() for s in entry.split('=', 1))
  kind, _, rest = spec.partition(':')
  kind = kind.strip()
  if not name:
    raise _spec_error(index, entry, 'empty FIELD')
  if kind not in KINDS:
    raise _spec_error(index, entry, f'unknown kind {kind!r} (allowed: {", ".join(KINDS)})')
  if kind == 'choice':
    return _parse_choice(index, entry, name, rest)
  return _parse_range(index, entry, name, kind, rest)


def _parse_choice(index: int, entry: str, name: str, rest: str) -> Param:
  choices = tuple(c.strip() for c in rest.split('|'))
  if not rest.strip() or any(not c for c in choices):
    raise _spec_error(index, entry, 'choice needs one or more non-empty A|B|C options')
  if len(set(choices)) != len(choices):
    raise _spec_error(index, entry, 'choice options repeat')
  return Param(name, 'choice', choices=choices)


def _parse_range(index: int, entry: str, name: str, kind: str, rest: str) -> Param:
  parts = rest.split(':')
  allowed = 3 if kind == 'int' else 2
  if not 2 <= len(parts) <= allowed:
    raise _spec_error(index, entry, f'{kind} needs LOW:HIGH' + ('[:STEP]' if kind == 'int' else ''))
  try:
    numbers = [int(p) if kind in ('int', 'logint') else float(p) for p in parts]
  except ValueError:
    what = 'integers' if kind in ('int', 'logint') else 'numbers'
    raise _spec_error(index, entry, f'{kind} bounds must be {what}') from None
  low, high = numbers[:2]
  step = numbers[2] if len(numbers) == 3 else 1
  if not (math.isfinite(low) and math.isfinite(high) and low < high):
    raise _spec_error(index, entry, 'need finite LOW < HIGH')
  if kind.startswith('log') and low <= 0:
    raise _spec_error(index, entry, 'a log scale needs LOW > 0')
  if step <= 0:
    raise _spec_error(index, entry, 'STEP must be > 0')
  return Param(name, kind, low, high, step)


def parse_space(entries: Sequence[str]) -> tuple[Param, ...]:
  """Parses ``config.tune.space``; a field may appear once."""
  if isinstance(entries, str):
    entries = (entries,)
  params = tuple(parse_param(e, i) for i, e in enumerate(entries))
  if not params:
    raise ConfigError(
        'config.tune.space is empty: nothing to search. Give entries such as '
        "--config.tune.space=\"('model.dropout=uniform:0.0:0.5',)\".")
  names = [p.name for p in params]
  repeated = sorted({n for n in names if names.count(n) > 1})
  if repeated:
    raise ConfigError(f'config.tune.space: {", ".join(repeated)} '
                      'appear more than once; keep one entry each.')
  return params


def _set_field(config: ml_collections.ConfigDict, path: str, value: Any) -> None:
  node = config
  *parents, leaf = path.split('.')
  for i, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(
          f'config.tune.space: config.{".".join(parents[:i + 1])} is not a section of '
          f'the config, so {path!r} cannot be searched. Use a field that exists in '
          f'configs/default.py, or {LR_SCALE!r}.')
    node = node[part]
  if leaf not in node or isinstance(node[leaf], ml_collections.ConfigDict):
    what = 'a section, not a field' if leaf in node else 'not a field of the config'
    raise ConfigError(
        f'config.tune.space: config.{path} is {what}. Use a field that exists in '
        f'configs/default.py (e.g. model.dropout), or {LR_SCALE!r}.')
  old = node[leaf]
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(value, list):
    value = tuple(value)
  if (isinstance(old, tuple) != isinstance(value, tuple)
      or (isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float))
      or (isinstance(old, bool) != isinstance(value, bool))):
    raise ConfigError(
        f'config.tune.space: config.{path} is {type(old).__name__} ({old!r}) but the '
        f'space gives {value!r} ({type(value).__name__}); use '
        f'{"int:LOW:HIGH" if isinstance(old, int) else "a matching choice"}.')
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.tune.space: config.{path}={value!r}: {e}') from None


def apply_params(config: ml_collections.ConfigDict, values: dict[str, Any]
                 ) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``values`` (config values, not study values) set.

  Fields are set first; ``lr_scale`` then multiplies every stage value of the
  schedule, so it composes with a searched ``schedule.stage_*_lrs``.
  """
  config = copy.deepcopy(config)
  for name, value in values.items():
    if name != LR_SCALE:
      _set_field(config, name, value)
  if LR_SCALE in values:
    scale = float(values[LR_SCALE])
    if not (math.isfinite(scale) and scale > 0):
      raise ConfigError(f'{LR_SCALE}={scale!r}: must be a positive number.')
    for field in ('stage_start_lrs', 'stage_end_lrs'):
      config.schedule[field] = tuple(float(v) * scale for v in config.schedule[field])
  return config


def config_values(space: Sequence[Param], study_params: dict[str, Any]) -> dict[str, Any]:
  """Study values (choice text) to config values, for the params in ``space``."""
  by_name = {p.name: p for p in space}
  return {k: by_name[k].value(v) if k in by_name else v for k, v in study_params.items()}
