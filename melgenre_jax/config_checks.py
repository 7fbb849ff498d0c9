"""Start-up checks of a configuration, before any data or compile work.

A bad value found after ten minutes of caching and compiling wastes the user's
time, so every field with a restricted range is checked here first, and each
message names the field and what it accepts.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import ml_collections

from melgenre_jax import input_spec
from melgenre_jax import models
from melgenre_jax import schedules
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.data import features
from melgenre_jax.data import sources
from melgenre_jax.data import splits
from melgenre_jax.data.songs import Song
from melgenre_jax.errors import ConfigError
from melgenre_jax.models import layers

__all__ = ['ConfigError', 'validate', 'check_workdir_compatible', 'architecture_differences',
           'check_cv', 'check_cv_folds', 'check_genre_task', 'require', 'choice']

# Fields that change the model's parameters or the meaning of its input: a
# workdir trained with other values cannot be resumed or evaluated with these.
ARCHITECTURE_FIELDS = ('model', 'audio', 'features', 'data.source', 'task')

# config.task: one genre per song (softmax), or several tags (sigmoids).
TASKS = ('genre', 'multilabel')


def require(ok: bool, field: str, value, allowed: str) -> None:
  if not ok:
    raise ConfigError(f'config.{field}={value!r} is invalid: {allowed}.')


def _positive_int(config, field: str) -> None:
  value = _get(config, field)
  require(isinstance(value, int) and not isinstance(value, bool) and value > 0,
           field, value, 'must be a positive integer')


def _positive(config, field: str) -> None:
  value = _get(config, field)
  require(isinstance(value, (int, float)) and value > 0, field, value,
           'must be > 0')


def choice(config, field: str, choices) -> None:
  value = _get(config, field)
  require(value in choices, field, value, f'allowed values are {", ".join(choices)}')


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for the first out-of-range field."""
  choice(config, 'data.source', sources.SOURCES)
  choice(config, 'data.split', splits.SPLITS)
  choice(config, 'features.where', input_spec.FEATURE_PLACES)
  choice(config, 'features.mel_norm', tuple(features.MEL_NORMS))
  choice(config, 'model.dtype', layers.DTYPES)
  require(config.task in TASKS, 'task', config.task,
           f'allowed values are {", ".join(TASKS)}')
  if 'multilabel' in config:
    threshold = config.multilabel.threshold
    require(isinstance(threshold, (int, float)) and not isinstance(threshold, bool)
             and 0 < threshold < 1, 'multilabel.threshold', threshold,
             'must be in (0, 1): predict lists the tags whose probability reaches it')
  if config.data.source in ('gtzan', 'folder'):
    root = config.data.root
    require(bool(root), 'data.root', root,
             f'data.source={config.data.source!r} needs the dataset folder: pass '
             '--config.data.root=/path/to/dataset')
    require(os.path.isdir(root), 'data.root', root,
             'that folder does not exist; check the path')
  if config.data.source == 'manifest':
    path = config.data.manifest
    require(bool(path) and os.path.isfile(path), 'data.manifest', path,
             'data.source=manifest needs an existing CSV: pass '
             '--config.data.manifest=/path/to/manifest.csv')
  if config.data.split == 'file':
    path = config.data.get('split_file', '')
    require(bool(path) and os.path.isfile(path), 'data.split_file', path,
             "data.split='file' needs an existing JSON file of song keys per split: "
             'pass --config.data.split_file=/path/to/split.json')
  for field in ('batch_size', 'eval_batch_size', 'num_epochs', 'audio.sample_rate',
                'features.n_fft', 'features.hop_length', 'features.n_mels',
                'model.conv_features', 'model.num_blocks', 'checkpoint.max_to_keep',
                'checkpoint.every_epochs', 'log_every_steps', 'eval_every_epochs',
                'data.synthetic.songs_per_genre'):
    _positive_int(config, field)
  frozen = config.model.get('frozen', '')
  family = models.family(config.model)
  require(not frozen or hasattr(family, 'is_frozen'), 'model.frozen', frozen,
           f'model.name={config.model.get("name", "crnn")!r} trains every layer; keeping layers '
           'fixed is for the pretrained families (musicnn): remove --config.model.frozen')
  if frozen:
    family.frozen(config.model)  # its own message for an unknown value
  if hasattr(family, 'head_input'):
    family.head_input(config.model)  # its own message for an unknown value
  else:  # 'penultimate' (configs/musicnn.py's) is every family's one choice
    head_input = config.model.get('head_input', 'penultimate')
    require(head_input == 'penultimate', 'model.head_input', head_input,
             f'model.name={config.model.get("name", "crnn")!r} has one head input; choosing it '
             'is for the musicnn family: remove --config.model.head_input')
  short_clip = config.audio.get('short_clip', 'pad')
  require(short_clip in audio.SHORT_CLIP_RULES, 'audio.short_clip', short_clip,
           'allowed values are ' + ', '.join(audio.SHORT_CLIP_RULES))
  offsets = config.audio.get('train_offsets', 'grid')
  require(offsets in ('grid', 'random'), 'audio.train_offsets', offsets,
           'allowed values are grid, random')
  if offsets == 'random':
    require(config.features.where == 'device', 'audio.train_offsets', offsets,
             "random training offsets shift waveforms: needs --config.features.where=device")
    require(config.audio.segment_hop_seconds <= config.audio.segment_seconds,
             'audio.train_offsets', offsets,
             'random offsets need audio.segment_hop_seconds <= audio.segment_seconds '
             '(segments that touch or overlap)')
    require(config.data.split != 'segment_random', 'audio.train_offsets', offsets,
             "split='segment_random' scatters a song's segments: use train_offsets=grid")
  smoothing = config.optim.get('label_smoothing', 0.0)
  require(isinstance(smoothing, (int, float)) and 0 <= smoothing < 1,
           'optim.label_smoothing', smoothing, 'must be in [0, 1)')
  require(smoothing == 0 or config.task == 'genre',
           'optim.label_smoothing', smoothing, "applies to task='genre' only: set it to 0")
  ema = config.get('ema_decay', 0.0)
  require(isinstance(ema, (int, float)) and 0 <= ema < 1, 'ema_decay', ema,
           'must be in [0, 1) (0: no weight averaging)')
  recompute = config.get('bn_recompute_batches', 0)
  require(isinstance(recompute, int) and not isinstance(recompute, bool) and recompute >= 0,
           'bn_recompute_batches', recompute,
           'must be an integer >= 0 (0: evaluate with the running averages)')
  microbatch = config.get('eval_microbatch', -1)
  require(isinstance(microbatch, int) and not isinstance(microbatch, bool)
           and microbatch >= -1, 'eval_microbatch', microbatch,
           'must be an integer >= -1 (-1: auto, 0: the whole batch at once)')
  cpu = config.get('cpu_devices', -1)
  require(isinstance(cpu, int) and not isinstance(cpu, bool) and (cpu == -1 or cpu >= 1),
           'cpu_devices', cpu, 'must be -1 (auto) or a device count >= 1')
  prefetch_batches = config.get('prefetch_batches', 2)
  require(isinstance(prefetch_batches, int) and not isinstance(prefetch_batches, bool)
           and prefetch_batches >= 0, 'prefetch_batches', prefetch_batches,
           'must be an integer >= 0 (0: no device prefetch)')
  for field in ('audio.segment_seconds', 'audio.segment_hop_seconds',
                'data.synthetic.song_seconds', 'features.amin'):
    _positive(config, field)
  require(0 <= config.model.dropout < 1, 'model.dropout', config.model.dropout,
           'must be in [0, 1)')
  require(config.model.leaky_slope >= 0, 'model.leaky_slope',
           config.model.leaky_slope, 'must be >= 0')
  require(0 < config.model.batchnorm_momentum < 1, 'model.batchnorm_momentum',
           config.model.batchnorm_momentum, 'must be in (0, 1)')
  require(len(config.model.lstm_sizes) >= 1 and all(
      isinstance(s, int) and s > 0 for s in config.model.lstm_sizes),
           'model.lstm_sizes', config.model.lstm_sizes,
           'must be one or more positive integers, e.g. (128, 32)')
  for field in ('model.branch_a_kernel', 'model.branch_a_pool',
                'model.branch_b_kernel', 'model.branch_b_pool'):
    value = tuple(_get(config, field))
    require(len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value),
             field, value, 'must be two positive integers (time, frequency)')
  require(0 <= config.data.validation_fraction < 1
           and 0 <= config.data.test_fraction < 1
           and config.data.validation_fraction + config.data.test_fraction < 1,
           'data.validation_fraction', config.data.validation_fraction,
           'validation_fraction and test_fraction must be in [0, 1) and sum to < 1')
  require(0 <= config.data.max_bad_fraction <= 1, 'data.max_bad_fraction',
           config.data.max_bad_fraction, 'must be in [0, 1]')
  require(config.data.worker_count >= 0, 'data.worker_count',
           config.data.worker_count, 'must be >= 0')
  require(config.optim.l2 >= 0, 'optim.l2', config.optim.l2, 'must be >= 0')
  n_fft = config.features.n_fft
  require(config.features.hop_length <= n_fft, 'features.hop_length',
           config.features.hop_length, f'must be <= features.n_fft ({n_fft})')
  nyquist = config.audio.sample_rate / 2
  require(0 <= config.features.fmin < (config.features.fmax or nyquist) <= nyquist,
           'features.fmin', config.features.fmin,
           f'need 0 <= fmin < fmax <= sample_rate/2 ({nyquist:g} Hz; fmax 0 = Nyquist)')
  segment = input_spec.InputSpec.from_config(config).segment_samples
  require(segment >= n_fft, 'audio.segment_seconds', config.audio.segment_seconds,
           f'a segment must hold at least one FFT window ({n_fft} samples)')
  try:
    schedules.check_schedule(config.schedule, config.num_epochs)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if 'cv' in config:
    check_cv(config)


def check_genre_task(config: ml_collections.ConfigDict, what: str, fix: str) -> None:
  """Refuses a config.task='multilabel' config for a mode that only handles genres.

  ``what``: what the mode does with genres; ``fix``: what to do instead.
  """
  if config.task == 'multilabel':
    raise ConfigError(f"{what}; this is a config.task='multilabel' run: {fix}.")


def check_cv(config: ml_collections.ConfigDict) -> None:
  """config.cv: fold count, repeats, fold unit and the validation carve."""
  for field, minimum in (('num_folds', 2), ('repeats', 1)):
    value = config.cv[field]
    require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
             f'cv.{field}', value, f'must be an integer >= {minimum}')
  choice(config, 'cv.by', splits.FOLD_UNITS)
  require(0 <= config.cv.validation_fraction < 1, 'cv.validation_fraction',
           config.cv.validation_fraction,
           'must be in [0, 1) (0: each fold run trains on all of its training songs and '
           'keeps its last epoch)')


def check_cv_folds(config: ml_collections.ConfigDict, songs: Sequence[Song],
                   by: str) -> None:
  """Refuses a fold count that leaves a test fold without some genre.

  Folds are filled per genre with whole units (groups when ``by='group'``,
  else songs), so every fold gets each genre exactly when the genre has at
  least ``num_folds`` units; a fold missing a genre would make its per-genre
  scores and macro-F1 incomparable with the others'.
  """
  k = config.cv.num_folds
  units = splits.units_per_genre(songs if by == 'group' else splits.ungrouped(songs))
  what = 'groups' if by == 'group' else 'songs'
  total = sum(units.values())
  if total < k:
    raise ConfigError(
        f'config.cv.num_folds={k} needs at least {k} {what}, but the source has '
        f'{total}: lower config.cv.num_folds or add songs.')
  short = {g: n for g, n in sorted(units.items()) if n < k}
  if short:
    fixes = []
    if min(short.values()) >= 2:
      fixes.append(f'lower config.cv.num_folds to at most {min(short.values())}')
    if by == 'group':
      fixes.append('fold by song (config.cv.by=song)')
    fixes.append('add songs')
    raise ConfigError(
        f'config.cv.num_folds={k}: genre(s) with fewer {what} than folds '
        f'({", ".join(f"{g}: {n}" for g, n in short.items())}), so some test fold '
        f'would have no songs of them: {", or ".join(fixes)}.')


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flatten(v, key + '.'))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def architecture_differences(saved: dict, config: ml_collections.ConfigDict
                             ) -> list[str]:
  """Fields (dotted) under ARCHITECTURE_FIELDS whose values differ."""
  now = _flatten(json.loads(config.to_json_best_effort()))
  before = _flatten(workdir_lib.fill_old_defaults(saved))
  diffs = []
  # The weights' moving average is part of the saved state only when it is on.
  ema_before, ema_now = before.get('ema_decay', 0.0), now.get('ema_decay', 0.0)
  if (ema_before > 0) != (ema_now > 0):
    diffs.append(f'ema_decay: workdir has {ema_before!r}, config has {ema_now!r} '
                 '(a moving average of the weights is saved only when ema_decay > 0)')
  for key in sorted(set(now) | set(before)):
    if any(key == f or key.startswith(f + '.') for f in ARCHITECTURE_FIELDS):
      if now.get(key) != before.get(key):
        diffs.append(f'{key}: workdir has {before.get(key)!r}, config has {now.get(key)!r}')
  return diffs


def check_workdir_compatible(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to resume a workdir whose model/feature config differs from ``config``."""
  if (not os.path.exists(workdir_lib.path(workdir, workdir_lib.CONFIG))
      or not workdir_lib.has_checkpoints(workdir)):
    return
  saved = workdir_lib.read_config_dict(workdir)
  diffs = architecture_differences(saved, config)
  if diffs:
    raise ConfigError(
        f'{workdir} holds a run made with a different model/data config, so its '
        'checkpoints cannot be resumed with this one:\n  ' + '\n  '.join(diffs) +
        '\nUse a new --workdir, or pass the same values as the saved run.')
