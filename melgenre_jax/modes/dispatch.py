"""Runs one mode: what main.py calls with the config, the workdir and the run's options.

``RunOptions`` holds every command-line setting that is not a config field
(the checkpoint step, predict's inputs and output, embed's, multi-host), built
once from the flags in main.py and passed down, as the Flax examples pass
``config, workdir``. ``run`` makes the process-wide settings that must come
before JAX starts its backend, then hands over to the mode.

The modes are imported inside ``run``, after those settings: importing one
pulls in JAX, Orbax and the data stack, which ``--help`` and a refused
command never need.
"""

from __future__ import annotations

import dataclasses
import logging as std_logging
import os
from typing import TYPE_CHECKING, Any

import ml_collections
from absl import logging

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import WorkdirError
from melgenre_jax.runtime import cpu_devices
from melgenre_jax.runtime import hostmem
from melgenre_jax.runtime import parallel

if TYPE_CHECKING:  # imported in run(), after the runtime settings (see the module doc)
  from melgenre_jax.modes import embed
  from melgenre_jax.modes import predict

MODES = ('train', 'eval', 'predict', 'embed', 'export', 'tune', 'calibrate', 'cv', 'import',
         'serve')
# The modes that take --model EXPORT_DIR (an export folder) instead of a workdir.
MODEL_DIR_MODES = ('predict', 'serve')


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """The run's settings from the command line besides the config (main.py's flags).

  ``step``: the checkpoint eval/predict/embed/export/calibrate restore (default:
  the best); ``audio`` to ``write_tags``: predict's inputs, output and the flags
  of the same names (see modes/predict/mode.py); embed takes ``audio``,
  ``per_segment``, ``embed_dir`` and the three window flags (see
  modes/embed.py); the four after: multi-host settings (see runtime.parallel).
  Each mode gets its part as its own options object (``predict_options``,
  ``embed_options``, ``reading_options``).
  """

  step: int | None = None
  audio: tuple[str, ...] = ()
  output: str = 'text'
  top_k: int = 3
  plot: bool = False
  output_file: str | None = None
  offset_seconds: float = 0.0
  max_seconds: float | None = None
  hop_seconds: float | None = None
  min_confidence: float = 0.0
  write_tags: str = 'off'
  per_segment: bool = False
  embed_dir: str | None = None
  coordinator_address: str = ''
  num_processes: int = 0
  process_id: int = -1
  peer_timeout_seconds: int = parallel.DEFAULT_PEER_TIMEOUT_SECONDS
  import_from: str = ''  # import: the pretrained weights (modes/import_pretrained.py)
  model: str = ''  # predict: an export folder to predict with, no workdir (modes/exported_model.py)
  host: str = '127.0.0.1'  # serve: where it listens (modes/serve/mode.py)
  port: int = 8000  # serve: 0 picks a free port
  max_upload_mb: float = 200.0  # serve: the largest upload accepted


class _DropLibraryInfo(std_logging.Filter):
  """Orbax logs every save at INFO; keep its warnings, drop the chatter."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    noisy = ('/orbax/', '/grain/', '/jax/_src/distributed')
    return record.levelno >= std_logging.WARNING or not any(
        n in record.pathname for n in noisy)


class _DropTpuProbe(std_logging.Filter):
  """JAX tries a TPU before the CPU; without libtpu that failure is an INFO line per command.

  A TPU machine that lacks libtpu still gets JAX's own warning saying so; a
  failing GPU backend's lines are kept.
  """

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unable to initialize backend 'tpu'")


def quiet_library_logs() -> None:
  """Library chatter dropped at its source; warnings and our own lines kept (before JAX starts)."""
  logging.get_absl_handler().addFilter(_DropLibraryInfo())
  std_logging.getLogger('jax._src.xla_bridge').addFilter(_DropTpuProbe())
  logging.set_verbosity(logging.INFO)


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


def check_workdir_path(workdir: str) -> None:
  """Refuses a ``--workdir`` that names something other than a folder."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir={workdir} is a file, not a folder: give a folder (a new '
                       'one for training, or the --workdir of an earlier run).')


def _start_runtime(config: ml_collections.ConfigDict | None, workdir: str,
                   options: RunOptions) -> None:
  """Allocator, multi-host and CPU-device settings, all before JAX starts its backend."""
  if config is None or config.get('keep_host_memory', True):
    # The setting then covers every thread's allocations (train_and_evaluate
    # repeats it for library use).
    hostmem.keep_freed_memory()
  distributed = parallel.maybe_initialize_distributed(
      options.coordinator_address, options.num_processes, options.process_id,
      options.peer_timeout_seconds)
  if not distributed:  # one device per core (cpu_devices.py)
    settings = config if config is not None else workdir_lib.config_or_none(workdir)
    settings = settings if settings is not None else ml_collections.ConfigDict()
    cpu_devices.configure(settings.get('cpu_devices', -1), settings.get('batch_size', 32))


def run(mode: str, config: ml_collections.ConfigDict | None, workdir: str,
        options: RunOptions = RunOptions()) -> Any:
  """Runs one mode. Training needs --config; the others fall back to the workdir's."""
  if mode not in MODES:
    raise ConfigError(f'--mode={mode!r}: allowed values are {", ".join(MODES)}.')
  if options.model:
    return _run_export_dir(mode, config, workdir, options)
  check_workdir_path(workdir)
  _start_runtime(config, workdir, options)
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  if mode in ('tune', 'cv') and config is None:
    raise ConfigError(f'--mode={mode} needs --config ('
                      + ('with a config.tune search space).' if mode == 'tune' else
                         'the recipe each fold trains with).'))
  if config is not None and mode in ('train', 'cv', 'tune'):
    from melgenre_jax.modes import import_pretrained
    config = import_pretrained.resolve_specs(config)  # musicnn:MODEL -> its imported workdir
  if mode == 'tune':
    from melgenre_jax.modes.tune import search
    return search.run_search(config, workdir)
  if mode == 'cv':
    from melgenre_jax.modes import cv
    return cv.run_cv(config, workdir)
  if mode == 'import':
    from melgenre_jax.modes import import_pretrained
    return import_pretrained.import_workdir(config, workdir, options.import_from)
  config = config if config is not None else workdir_lib.load_workdir_config(workdir)
  if mode == 'train':
    from melgenre_jax import train
    return train.train_and_evaluate(config, workdir)
  if mode == 'eval':
    from melgenre_jax.modes import evaluate
    return evaluate.evaluate_workdir(config, workdir, step=options.step)
  if mode == 'predict':
    from melgenre_jax.modes import predict
    return predict.predict_paths(config, workdir, predict_options(options))
  if mode == 'embed':
    from melgenre_jax.modes import embed
    return embed.embed_paths(config, workdir, embed_options(options))
  if mode == 'serve':
    return _serve(config, workdir, options)
  if mode == 'calibrate':
    from melgenre_jax.modes import calibrate
    return calibrate.calibrate_workdir(config, workdir, step=options.step)
  from melgenre_jax.modes import export
  return export.export_workdir(config, workdir, step=options.step)


def reading_options(options: RunOptions, answers: bool = True) -> predict.Options:
  """How predict, serve and embed read each file (``stream.Options``) from the run's options.

  ``answers=False`` (embed, which answers with vectors) leaves ``--top_k`` and
  ``--min_confidence`` at their defaults, so those predict flags are ignored there.
  """
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  from melgenre_jax.modes import predict
  window = predict.Options(hop_seconds=options.hop_seconds,
                           offset_seconds=options.offset_seconds,
                           max_seconds=options.max_seconds)
  if not answers:
    return window
  return dataclasses.replace(window, top_k=options.top_k,
                             min_confidence=options.min_confidence)


def predict_options(options: RunOptions) -> predict.PredictOptions:
  """predict's ``PredictOptions`` from the run's options."""
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  from melgenre_jax.modes import predict
  return predict.PredictOptions(
      paths=tuple(options.audio), step=options.step, output=options.output,
      output_file=options.output_file, plot=options.plot, write_tags=options.write_tags,
      model_dir=options.model or None, reading=reading_options(options))


def embed_options(options: RunOptions) -> embed.EmbedOptions:
  """embed's ``EmbedOptions`` from the run's options (of the reading flags, the window ones)."""
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  from melgenre_jax.modes import embed
  return embed.EmbedOptions(
      paths=tuple(options.audio), step=options.step, per_segment=options.per_segment,
      embed_dir=options.embed_dir, reading=reading_options(options, answers=False))


def check_model_dir(mode: str, config: ml_collections.ConfigDict | None,
                    options: RunOptions, modes: tuple[str, ...] = MODEL_DIR_MODES) -> None:
  """Refuses ``--model`` where it cannot be used (another mode, --config, --step, no folder)."""
  if mode not in modes:
    raise ConfigError(f'--model is for --mode={" or --mode=".join(modes)}; --mode={mode} '
                      'works on a --workdir.')
  if config is not None:
    raise ConfigError('--model EXPORT_DIR carries its own config (config.json there): drop '
                      '--config.')
  if options.step is not None:
    raise ConfigError(f'--step={options.step}: an export folder holds one checkpoint; drop '
                      '--step (or export that step: --mode=export --step N on the workdir).')
  if not os.path.isfile(os.path.join(options.model, 'contract.json')):
    raise WorkdirError(f'--model={options.model} is not an export folder (no contract.json '
                       'in it): give the export/ folder of a run (python main.py --workdir W '
                       '--mode export writes W/export), or use --workdir W.')


def _serve(config: ml_collections.ConfigDict | None, workdir: str | None,
           options: RunOptions) -> None:
  """``--mode=serve`` on a workdir, or on an export folder (``--model``)."""
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  from melgenre_jax.modes import serve
  return serve.serve_workdir(
      config, workdir, step=options.step, model_dir=options.model or None,
      options=reading_options(options),
      serve=serve.ServeOptions(host=options.host, port=options.port,
                               max_upload_mb=options.max_upload_mb))


def _run_export_dir(mode: str, config: ml_collections.ConfigDict | None, workdir: str | None,
                    options: RunOptions) -> Any:
  """``--model EXPORT_DIR``: predict from an export folder alone (no workdir, no checkpoint)."""
  check_model_dir(mode, config, options)
  if workdir:
    check_workdir_path(workdir)
  _start_runtime(None, options.model, options)  # the folder's config.json sets the CPU devices
  if mode == 'serve':
    return _serve(None, None, options)
  # pylint: disable=g-import-not-at-top  (after the runtime settings; see the module doc)
  from melgenre_jax.modes import predict
  return predict.predict_paths(None, workdir, predict_options(options))
