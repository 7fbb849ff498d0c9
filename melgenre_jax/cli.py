"""Mode dispatch for main.py, kept out of main.py so it stays a thin flag parser."""

from __future__ import annotations

import json
import logging as std_logging
import os
from typing import Any

import ml_collections
from absl import logging

from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.runtime import cpu_devices
from melgenre_jax.runtime import hostmem
from melgenre_jax.runtime import parallel

MODES = ('train', 'eval', 'predict', 'embed', 'export', 'tune', 'calibrate', 'cv')


class _DropLibraryInfo(std_logging.Filter):
  """Orbax logs every save at INFO; keep its warnings, drop the chatter."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = ('/orbax/', '/grain/', '/jax/_src/distributed')
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in noisy)


def quiet_library_logs() -> None:
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  logging.set_verbosity(logging.INFO)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (written by the train loop)."""
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise WorkdirError(
        f'{path} not found: is {workdir!r} the --workdir of a training run? Train '
        'first (python main.py --config configs/synthetic.py --workdir ...) or '
        'point --workdir at an existing run.')
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def _workdir_config_or_none(workdir: str) -> ml_collections.ConfigDict | None:
  try:
    return load_workdir_config(workdir)
  except (WorkdirError, OSError, ValueError):  # the mode itself says what is wrong
    return None


def _tuples(d: Any) -> Any:
  """JSON lists back to tuples, as the config files write them."""
  if isinstance(d, dict):
    return {k: _tuples(v) for k, v in d.items()}
  if isinstance(d, list):
    return tuple(_tuples(v) for v in d)
  return d


def audio_paths(flag_values: list[str] | tuple[str, ...],
                positional: list[str] | tuple[str, ...]) -> list[str]:
  """Predict's inputs: ``--audio`` values (repeated or comma-separated) then positional ones.

  A value that names an existing file is kept whole even if it holds commas
  (``Artist, The - Song.mp3``); only other values are split.
  """
  out = []
  for value in flag_values:
    out.extend([value] if os.path.exists(value) else [v for v in value.split(',') if v])
  return out + list(positional)


def run(mode: str, config: ml_collections.ConfigDict | None, workdir: str, *,
        step: int | None = None, audio: tuple[str, ...] | list[str] = (),
        output: str = 'text', top_k: int = 3, plot: bool = False,
        output_file: str | None = None, offset_seconds: float = 0.0,
        max_seconds: float | None = None, hop_seconds: float | None = None,
        min_confidence: float = 0.0, write_tags: str = 'off',
        per_segment: bool = False, embed_dir: str | None = None,
        coordinator_address: str = '', num_processes: int = 0,
        process_id: int = -1,
        peer_timeout_seconds: int = parallel.DEFAULT_PEER_TIMEOUT_SECONDS) -> Any:
  """Runs one mode. Training needs --config; the others fall back to the workdir's.

  ``step``: the checkpoint eval/predict/export restore (default: the best);
  ``audio`` to ``write_tags``: predict's inputs, output and the flags of the
  same names (see modes/predict/mode.py); embed takes ``audio``, ``per_segment``,
  ``embed_dir`` and the three window flags (see modes/embed.py);
  the last four: multi-host settings (see runtime.parallel).
  """
  if config is None or config.get('keep_host_memory', True):
    # Before JAX starts its backend and thread pool: the setting then covers
    # every thread's allocations (train_and_evaluate repeats it for library use).
    hostmem.keep_freed_memory()
  distributed = parallel.maybe_initialize_distributed(coordinator_address, num_processes,
                                                     process_id, peer_timeout_seconds)
  if not distributed:  # also before the backend starts: one device per core (cpu_devices.py)
    settings = config if config is not None else _workdir_config_or_none(workdir)
    settings = settings if settings is not None else ml_collections.ConfigDict()
    cpu_devices.configure(settings.get('cpu_devices', -1), settings.get('batch_size', 32))
  if mode == 'train':
    if config is None:
      config = load_workdir_config(workdir)
    from melgenre_jax import train  # pylint: disable=g-import-not-at-top
    return train.train_and_evaluate(config, workdir)
  if mode == 'tune':
    if config is None:
      raise ConfigError('--mode=tune needs --config (with a config.tune search space).')
    from melgenre_jax.modes.tune import search  # pylint: disable=g-import-not-at-top
    return search.run_search(config, workdir)
  if mode == 'cv':
    if config is None:
      raise ConfigError('--mode=cv needs --config (the recipe each fold trains with).')
    from melgenre_jax.modes import cv  # pylint: disable=g-import-not-at-top
    return cv.run_cv(config, workdir)
  config = config if config is not None else load_workdir_config(workdir)
  if mode == 'eval':
    from melgenre_jax.modes import evaluate  # pylint: disable=g-import-not-at-top
    return evaluate.evaluate_workdir(config, workdir, step=step)
  if mode == 'predict':
    from melgenre_jax.modes import predict  # pylint: disable=g-import-not-at-top
    return predict.predict_paths(
        config, workdir, list(audio), step=step, output=output, top_k=top_k, plot=plot,
        output_file=output_file, offset_seconds=offset_seconds, max_seconds=max_seconds,
        hop_seconds=hop_seconds, min_confidence=min_confidence, write_tags=write_tags)
  if mode == 'embed':
    from melgenre_jax.modes import embed  # pylint: disable=g-import-not-at-top
    return embed.embed_paths(
        config, workdir, list(audio), step=step, per_segment=per_segment,
        embed_dir=embed_dir, offset_seconds=offset_seconds, max_seconds=max_seconds,
        hop_seconds=hop_seconds)
  if mode == 'calibrate':
    from melgenre_jax import calibration  # pylint: disable=g-import-not-at-top
    return calibration.calibrate_workdir(config, workdir, step=step)
  if mode == 'export':
    from melgenre_jax.modes import export  # pylint: disable=g-import-not-at-top
    return export.export_workdir(config, workdir, step=step)
  raise ConfigError(f'--mode={mode!r}: allowed values are {", ".join(MODES)}.')
