"""Command-line entry point: flags -> config -> the package.

  python main.py --config configs/synthetic.py --workdir runs/synthetic
  python main.py --config configs/gtzan.py --workdir runs/gtzan --config.data.root=/data/gtzan
  python main.py --workdir runs/synthetic --mode eval
  python main.py --workdir runs/synthetic --mode predict song.mp3 my_folder/

Any config field can be overridden with --config.some.field=value.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from melgenre_jax import cli
from melgenre_jax import errors
from melgenre_jax.runtime import parallel

FLAGS = flags.FLAGS
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, plots and reports.')
flags.DEFINE_enum('mode', 'train', cli.MODES, 'What to do with the workdir.')
flags.DEFINE_integer('step', None, 'eval/predict/export: checkpoint step (default: the best).')
flags.DEFINE_multi_string('audio', [], 'predict: audio files or folders to classify '
                          '(repeated or comma-separated; or give them after the flags).')
flags.DEFINE_enum('output', 'text', ['text', 'json'], 'predict: print text, or write JSON.')
flags.DEFINE_integer('top_k', 3, 'predict: how many genres to show per song.')
flags.DEFINE_bool('plot', False, 'predict: save a genre-over-time PNG per song.')
flags.DEFINE_string('coordinator_address', '', 'Multi-host: host:port of process 0.')
flags.DEFINE_integer('num_processes', 0, 'Multi-host: number of processes.')
flags.DEFINE_integer('process_id', -1, 'Multi-host: index of this process.')
flags.DEFINE_integer('peer_timeout_seconds', parallel.DEFAULT_PEER_TIMEOUT_SECONDS,
                     'Multi-host: when a process dies, the others stop (PeerLostError) at '
                     'the latest after this long without a sign of life from it.')
config_flags.DEFINE_config_file(
    'config', None, 'Config file (configs/*.py). Optional for eval/predict/export, '
    'which read WORKDIR/config.json.', lock_config=True)
flags.mark_flags_as_required(['workdir'])


def main(argv):
  paths = argv[1:]  # audio files and folders, for --mode=predict
  if paths and FLAGS.mode != 'predict':
    raise app.UsageError(f'Unexpected arguments: {paths} (only --mode=predict takes audio '
                         'paths after the flags).')
  cli.quiet_library_logs()
  try:
    with parallel.peer_failures_as_errors():
      cli.run(FLAGS.mode, FLAGS.config, FLAGS.workdir, step=FLAGS.step,
              audio=cli.audio_paths(FLAGS.audio, paths), output=FLAGS.output,
              top_k=FLAGS.top_k, plot=FLAGS.plot,
              coordinator_address=FLAGS.coordinator_address,
              num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
              peer_timeout_seconds=FLAGS.peer_timeout_seconds)
  except errors.UserError as e:
    logging.error('%s: %s', type(e).__name__, e)  # what to do, without a traceback
    if isinstance(e, errors.PeerLostError):
      parallel.exit_without_shutdown(1)  # JAX's shutdown would wait for the lost peer
    raise SystemExit(1) from None
  logging.info('Done (%s).', FLAGS.mode)


if __name__ == '__main__':
  app.run(main)
