"""Command-line entry point: flags -> config -> the package.

  python main.py --config configs/synthetic.py --workdir runs/synthetic
  python main.py --config configs/gtzan.py --workdir runs/gtzan --config.data.root=/data/gtzan
  python main.py --workdir runs/synthetic --mode eval
  python main.py --workdir runs/synthetic --mode predict song.mp3 my_folder/
  python main.py --workdir runs/synthetic --mode predict --output csv --write_tags ~/Music
  python main.py --workdir runs/synthetic --mode embed my_folder/ --per_segment
  python main.py --mode=import --import_from=musicnn:MSD_musicnn --workdir runs/msd_musicnn
  python main.py --mode=predict --model runs/synthetic/export song.mp3   # the export folder alone
  python main.py --workdir runs/synthetic --mode serve   # a web page on 127.0.0.1:8000

Any config field can be overridden with --config.some.field=value.
"""

import os
import sys
import traceback

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from configs import musicnn as musicnn_config
from melgenre_jax import errors
from melgenre_jax.modes import dispatch
from melgenre_jax.runtime import parallel

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, plots and reports.')
flags.DEFINE_enum('mode', 'train', dispatch.MODES, 'What to do with the workdir.')
flags.DEFINE_integer('step', None,
                     'eval/predict/embed/export: checkpoint step (default: the best).')
flags.DEFINE_multi_string('audio', [], 'predict/embed: audio files or folders to classify '
                          '(repeated or comma-separated; or give them after the flags).')
flags.DEFINE_enum('output', 'text', ['text', 'json', 'csv'],
                  'predict: print text; write one JSON report at the end; or append a CSV '
                  'row per file as it finishes (a re-run skips the files already in it).')
flags.DEFINE_string('output_file', None, 'predict: where --output json/csv is written '
                    '(default WORKDIR/predictions/predictions.json or .csv).')
flags.DEFINE_integer('top_k', 3, 'predict: how many genres to show per song.')
flags.DEFINE_bool('plot', False, 'predict: save a genre-over-time PNG per song.')
flags.DEFINE_float('offset_seconds', 0.0, 'predict/embed: skip this much of every file.')
flags.DEFINE_float('max_seconds', None, 'predict/embed: read at most this much of every file '
                   '(after --offset_seconds; default: to the end). serve: refuse longer '
                   'uploads (default 1200).')
flags.DEFINE_float('hop_seconds', None, 'predict/embed: time between window starts (shorter than '
                   'a window: overlapping windows; default: the training hop).')
flags.DEFINE_float('min_confidence', 0.0, 'predict: a song whose top calibrated probability '
                   'is below this is reported as uncertain (0..1; 0: off).')
# predict's WRITE_TAGS, spelled out here: importing predict would slow every start.
WRITE_TAGS = ('off', 'dry_run', 'apply', 'keep')
flags.DEFINE_enum('write_tags', 'off', list(WRITE_TAGS),
                  'predict: write the top genre into each file\'s genre tag. A bare '
                  '--write_tags lists the changes (dry_run); --write_tags=apply writes them; '
                  '--write_tags=keep writes only files without a genre tag. Skipped and '
                  'uncertain files are never tagged.')
flags.DEFINE_bool('per_segment', False, 'embed: also write every segment\'s embedding '
                  '(segment_embeddings.npy/.csv), not only each song\'s mean.')
flags.DEFINE_string('embed_dir', None, 'embed: folder the embeddings are written to '
                    '(default WORKDIR/embeddings).')
flags.DEFINE_string('import_from', '', 'import: pretrained weights, musicnn:MSD_musicnn | '
                    'musicnn:MTT_musicnn | musicnn:MSD_vgg | musicnn:MTT_vgg, a path to the '
                    'musicnn wheel (WHEEL:MODEL) or an unpacked checkpoint folder.')
flags.DEFINE_string('host', '127.0.0.1', 'serve: the address to listen on (0.0.0.0: every '
                    'interface; the page has no login, so only on a trusted network).')
flags.DEFINE_integer('port', 8000, 'serve: the port to listen on (0: any free port; the '
                     'address is printed).')
flags.DEFINE_float('max_upload_mb', 200.0, 'serve: the largest upload accepted, in MB '
                   '(larger ones get 413 once this much has arrived).')
flags.DEFINE_string('model', '', 'predict/serve: an export folder (WORKDIR/export, written by '
                    '--mode=export) to predict with instead of a --workdir: no checkpoint or '
                    'training code needed.')
flags.DEFINE_string('coordinator_address', '', 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-host: index of this process.')
flags.DEFINE_integer('peer_timeout_seconds', parallel.DEFAULT_PEER_TIMEOUT_SECONDS,
                     'Multi-host: when a process dies, the others stop (PeerLostError) at '
                     'the latest after this long without a sign of life from it.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py). Optional for eval/predict/export, '
    'which read WORKDIR/config.json.', lock_config=True)
flags.register_multi_flags_validator(
    ['workdir', 'model'], lambda f: bool(f['workdir'] or f['model']),
    message='--workdir is required (or --model EXPORT_DIR with --mode=predict).')


def bare_write_tags(argv: list[str]) -> list[str]:
  """``--write_tags`` without a value means dry_run, ``--nowrite_tags`` means off.

  absl gives a non-boolean flag the next argument as its value, so a bare
  ``--write_tags song.mp3`` would read 'song.mp3' as the mode.
  """
  out = list(argv[:1])
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':
      return out + argv[i:]
    following = argv[i + 1] if i + 1 < len(argv) else None
    if arg in ('--write_tags', '-write_tags') and following not in WRITE_TAGS:
      arg = '--write_tags=dry_run'
    elif arg in ('--nowrite_tags', '-nowrite_tags'):
      arg = '--write_tags=off'
    out.append(arg)
  return out


def config_file_error(path: str | None, exc: BaseException) -> str:
  """One line for a ``--config`` file or ``--config.*`` override absl could not use."""
  shown = path or '(none given)'
  if isinstance(exc, SyntaxError):
    return (f'ConfigError: --config {shown}: line {exc.lineno}: {exc.msg}; fix the file '
            '(configs/*.py are working examples).')
  if isinstance(exc, AttributeError) and 'get_config' in str(exc):
    return (f'ConfigError: --config {shown} has no get_config(): a config file defines '
            'get_config() returning an ml_collections.ConfigDict (see configs/tiny.py).')
  in_file = [f for f in traceback.extract_tb(exc.__traceback__)
             if path and os.path.abspath(f.filename) == os.path.abspath(path)]
  if in_file:  # raised by the config file's own code
    return (f'ConfigError: --config {shown}: line {in_file[-1].lineno}: '
            f'{type(exc).__name__}: {_innermost_message(exc)}; fix the file.')
  if isinstance(exc, (AttributeError, KeyError)):  # an override naming no field
    field, _, hint = _innermost_message(exc).partition('\n')
    return (f'ConfigError: a --config.* override names no field of {shown}: no field '
            f'{field}.{" " + hint if hint else ""}')
  if not path or not os.path.exists(path):
    return (f'ConfigError: --config {shown}: no such file; give a config file such as '
            'configs/synthetic.py.')
  return f'ConfigError: --config {shown} could not be loaded: {exc}'


def _innermost_message(exc: BaseException) -> str:
  """The message of the error at the bottom of ``exc``'s wrapping (ml_collections wraps twice)."""
  while exc.args and isinstance(exc.args[0], BaseException):
    exc = exc.args[0]
  return str(exc.args[0]) if exc.args else str(exc)


def config_path(argv: list[str]) -> str | None:
  """The ``--config`` value in ``argv`` (for the error line; absl has not parsed it)."""
  for i, arg in enumerate(argv):
    for prefix in ('--config=', '-config='):
      if arg.startswith(prefix):
        return arg[len(prefix):].split(':', 1)[0]
    if arg in ('--config', '-config') and i + 1 < len(argv):
      return argv[i + 1].split(':', 1)[0]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing; a config file that cannot be loaded ends in one line, no traceback."""
  try:
    return app.parse_flags_with_usage(bare_write_tags(argv))
  except (OSError, SyntaxError, AttributeError, KeyError) as e:
    sys.exit(config_file_error(config_path(argv), e))


def run_options(paths: list[str]) -> dispatch.RunOptions:
  """The run's options from the flags (and the audio paths given after them)."""
  return dispatch.RunOptions(
      step=FLAGS.step, audio=tuple(dispatch.audio_paths(FLAGS.audio, paths)), output=FLAGS.output,
      top_k=FLAGS.top_k, plot=FLAGS.plot, output_file=FLAGS.output_file,
      offset_seconds=FLAGS.offset_seconds, max_seconds=FLAGS.max_seconds,
      hop_seconds=FLAGS.hop_seconds, min_confidence=FLAGS.min_confidence,
      write_tags=FLAGS.write_tags, per_segment=FLAGS.per_segment, embed_dir=FLAGS.embed_dir,
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id, peer_timeout_seconds=FLAGS.peer_timeout_seconds,
      import_from=FLAGS.import_from, model=FLAGS.model, host=FLAGS.host, port=FLAGS.port,
      max_upload_mb=FLAGS.max_upload_mb)


def loaded_config():
  """``--config``'s ConfigDict (None when not given); a file absl failed to read is one line."""
  config = FLAGS.config
  if config is None:
    return None
  try:
    config.keys()  # config_flags defers a file's loading error to the first use
  except OSError as e:
    sys.exit(config_file_error(FLAGS['config'].config_filename, e))
  return config


def main(argv):
  paths = argv[1:]  # audio files and folders, for --mode=predict and --mode=embed
  if paths and FLAGS.mode not in ('predict', 'embed'):
    raise app.UsageError(f'Unexpected arguments: {paths} (only --mode=predict takes audio '
                         'paths after the flags, and --mode=embed).')
  config = loaded_config()
  if config is None and FLAGS.mode == 'import':  # the family's recipe is the import's base
    config = musicnn_config.get_config()
  dispatch.quiet_library_logs()
  try:
    with parallel.peer_failures_as_errors():
      dispatch.run(FLAGS.mode, config, FLAGS.workdir, run_options(paths))
  except errors.UserError as e:
    logging.error('%s: %s', type(e).__name__, e)  # what to do, without a traceback
    if isinstance(e, errors.PeerLostError):
      parallel.exit_without_shutdown(1)  # JAX's shutdown would wait for the lost peer
    raise SystemExit(1) from None
  logging.info('Done (%s).', FLAGS.mode)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
