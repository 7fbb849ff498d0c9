"""Transfer from bigger data: fine-tuned vs from scratch vs frozen embeddings, same folds.

  python benchmarks/bench_transfer.py --source=synthetic --workdir=/tmp/transfer_synthetic
  python benchmarks/bench_transfer.py --source=manifest --workdir=/tmp/transfer_real \
      --manifest=/path/to/manifest.csv --folds=2

(``--folds``: each genre of the target half needs at least that many artists;
409 GTZAN excerpts halved by artist leave two blues artists a side.)

Protocol (both sources):
  1. split the labelled material in two disjoint parts: a *pretraining* part
     and a small *target* part (synthetic: five styles with many songs vs the
     other five styles with ``--target_songs`` songs each, so the target
     genres were never seen; manifest: the artists (group column) split in
     halves, stratified by genre, so no artist is on both sides);
  2. train the pretraining run on its part (an ordinary run, resumable);
  3. cross-validate on the target part (``--mode=cv``'s folds: by artist when
     the source has groups, else by song; ``--folds`` x ``--seeds`` runs per
     arm, the same folds for every arm), with equal epochs:
       * ``scratch``: random initialisation;
       * ``finetuned``: ``config.init_from`` = the pretraining run (head
         re-initialised when the label sets differ);
       * ``frozen_embeddings``: the pretraining run's embeddings
         (``--mode=embed``'s per-song mean) + logistic regression (scikit-learn,
         standardised features, C=1) fitted on each fold's training and
         validation songs, scored on its test songs;
  4. print a markdown table (mean +- sample sd of song accuracy over folds x
     seeds) and write ``WORKDIR/transfer.json``.
Every run is resumable: killed, the same command continues where it stopped.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from collections import defaultdict

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(os.path.expanduser('~'), '.cache', 'melgenre_jax_bench_xla'))

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from melgenre_jax import inference  # noqa: E402
from melgenre_jax import train  # noqa: E402
from melgenre_jax import workdir as workdir_lib  # noqa: E402
from melgenre_jax.data import input_pipeline  # noqa: E402
from melgenre_jax.data import synthetic  # noqa: E402
from melgenre_jax.modes import cv  # noqa: E402
from melgenre_jax.modes import dispatch  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum('source', 'synthetic', ['synthetic', 'manifest'], 'Material to measure on.')
flags.DEFINE_string('workdir', None, 'Where every run of the study lives.')
flags.DEFINE_string('manifest', '', 'source=manifest: CSV path,label,group (groups required).')
flags.DEFINE_integer('folds', 5, 'Cross-validation folds on the target part.')
flags.DEFINE_integer('seeds', 3, 'Repeats of the cross-validation (seed + r).')
flags.DEFINE_integer('target_songs', 5, 'source=synthetic: songs per target genre.')
flags.DEFINE_float('target_seconds', 6.0, 'source=synthetic: length of each target song.')
flags.DEFINE_integer('target_batch', 0, 'Target runs\' batch size (0: 8 for synthetic, 16 for a '
                     'manifest; small sets: a few steps an epoch).')
flags.DEFINE_integer('pretrain_songs', 40, 'source=synthetic: songs per pretraining genre.')
flags.DEFINE_integer('epochs', 0, 'Target runs\' epochs (0: the study\'s default).')
flags.DEFINE_list('arms', ['scratch', 'finetuned', 'frozen_embeddings'], 'Arms to run.')
flags.mark_flags_as_required(['workdir'])

ARMS = ('scratch', 'finetuned', 'frozen_embeddings')


def compressed_schedule(config: ml_collections.ConfigDict, epochs: int) -> None:
  """The reference schedule's shape (warm-up, flat, step down, anneal) over ``epochs``."""
  warm, drop = max(1, epochs // 10), max(1, epochs // 10)
  config.num_epochs = epochs
  config.schedule.stage_ends = (warm, epochs - 2 * drop, epochs - drop, epochs)


def synthetic_configs() -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """Pretraining on five styles (many songs), target: the other five (few songs)."""
  from configs import synthetic as base  # pylint: disable=g-import-not-at-top
  pretrain, target = base.get_config(), base.get_config()
  pretrain.data.synthetic.genres = tuple(synthetic.GENRES[:5])
  pretrain.data.synthetic.songs_per_genre = FLAGS.pretrain_songs
  target.data.synthetic.genres = tuple(synthetic.GENRES[5:])
  target.data.synthetic.songs_per_genre = FLAGS.target_songs
  target.data.synthetic.song_seconds = FLAGS.target_seconds
  compressed_schedule(target, FLAGS.epochs or 10)
  return pretrain, target


def split_manifest(path: str, out_dir: str) -> tuple[str, str]:
  """Two manifests, artists halved per genre (a stable hash orders each genre's artists)."""
  path = os.path.abspath(path)
  with open(path, newline='', encoding='utf-8') as f:
    rows = list(csv.DictReader(f))
  if not rows or any(not r.get('group') for r in rows):
    raise SystemExit(f'{path}: every row needs a group (artist) for an artist-disjoint split.')
  groups_by_genre = defaultdict(list)
  genre_of_group = {}
  for r in rows:
    if r['group'] not in genre_of_group:
      genre_of_group[r['group']] = r['label']
      groups_by_genre[r['label']].append(r['group'])
  side = {}
  for groups in groups_by_genre.values():
    ordered = sorted(groups, key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    for i, g in enumerate(ordered):
      side[g] = i % 2
  base = os.path.dirname(path)
  outs = []
  for half in (0, 1):
    out = os.path.join(out_dir, f'manifest_half{half}.csv')
    with open(out, 'w', newline='', encoding='utf-8') as f:
      w = csv.writer(f)
      w.writerow(['path', 'label', 'group'])
      for r in rows:
        if side[r['group']] == half:
          p = r['path'] if os.path.isabs(r['path']) else os.path.join(base, r['path'])
          w.writerow([p, r['label'], r['group']])
    outs.append(out)
  return outs[0], outs[1]


def manifest_configs(workdir: str) -> tuple[ml_collections.ConfigDict, ml_collections.ConfigDict]:
  """Pretraining on half the artists, target: the other half."""
  from configs import folder as base  # pylint: disable=g-import-not-at-top
  first, second = split_manifest(FLAGS.manifest, workdir)
  pretrain, target = base.get_config(), base.get_config()
  for config, manifest in ((pretrain, first), (target, second)):
    config.data.source = 'manifest'
    config.data.manifest = manifest
    config.data.root = ''
    compressed_schedule(config, FLAGS.epochs or 20)
  return pretrain, target


def fold_dirs(cv_workdir: str) -> list[str]:
  cv_dir = os.path.join(cv_workdir, cv.CV_DIR)
  return sorted(os.path.join(cv_dir, d) for d in os.listdir(cv_dir) if d.startswith('fold_'))


def frozen_embedding_scores(pretrain_dir: str, folds_from: str) -> list[float]:
  """Per fold: logistic regression on the pretrained run's song embeddings."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.pipeline import make_pipeline  # pylint: disable=g-import-not-at-top
  from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
  from melgenre_jax.modes import embed  # pylint: disable=g-import-not-at-top
  model = inference.load_for_inference(workdir_lib.load_workdir_config(pretrain_dir), pretrain_dir)
  scores = []
  for fold_dir in fold_dirs(folds_from):
    config = workdir_lib.load_workdir_config(fold_dir)
    dataset = input_pipeline.load_dataset(config, fold_dir)
    parts = {}
    for name in ('train', 'validation', 'test'):
      x, y = embed.embed_dataset_split(model, getattr(dataset, name))
      parts[name] = (np.asarray(x), np.asarray(y))
    x_fit = np.concatenate([parts['train'][0], parts['validation'][0]])
    y_fit = np.concatenate([parts['train'][1], parts['validation'][1]])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    clf.fit(x_fit, y_fit)
    scores.append(float(np.mean(clf.predict(parts['test'][0]) == parts['test'][1])))
    logging.info('frozen_embeddings %s: song accuracy %.3f', os.path.basename(fold_dir),
                 scores[-1])
  return scores


def cv_scores(cv_workdir: str) -> list[float]:
  with open(os.path.join(cv_workdir, cv.CV_DIR, 'summary.json')) as f:
    summary = json.load(f)
  return [row['song_accuracy'] for row in summary['folds']]


def mean_sd(values: list[float]) -> str:
  sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
  return f'{np.mean(values):.3f} ± {sd:.3f}'


def main(argv):
  del argv
  dispatch.quiet_library_logs()
  workdir = os.path.abspath(FLAGS.workdir)
  os.makedirs(workdir, exist_ok=True)
  if FLAGS.source == 'synthetic':
    pretrain, target = synthetic_configs()
  else:
    pretrain, target = manifest_configs(workdir)
  pretrain.data.test_fraction = 0.0  # every pretraining song trains or validates
  target.batch_size = FLAGS.target_batch or (8 if FLAGS.source == 'synthetic' else 16)
  for config in (pretrain, target):
    config.progress_bar = False
    config.cv.num_folds = FLAGS.folds
    config.cv.repeats = FLAGS.seeds
    config.data.cache_dir = os.path.join(workdir, 'cache')

  pretrain_dir = os.path.join(workdir, 'pretrain')
  pretrained = train.train_and_evaluate(pretrain, pretrain_dir)
  logging.info('pretraining run: best validation song accuracy %.3f',
               pretrained['best_val_song_accuracy'])

  results = {}
  for arm in FLAGS.arms:
    if arm == 'frozen_embeddings':
      continue
    config = target.copy_and_resolve_references()
    if arm == 'finetuned':
      config.init_from = pretrain_dir
    cv.run_cv(config, os.path.join(workdir, arm))
    results[arm] = cv_scores(os.path.join(workdir, arm))
  if 'frozen_embeddings' in FLAGS.arms:
    folds_from = next(os.path.join(workdir, a) for a in ('scratch', 'finetuned')
                      if os.path.isdir(os.path.join(workdir, a, cv.CV_DIR)))
    results['frozen_embeddings'] = frozen_embedding_scores(pretrain_dir, folds_from)

  with open(os.path.join(workdir, 'transfer.json'), 'w') as f:
    json.dump({'source': FLAGS.source, 'folds': FLAGS.folds, 'seeds': FLAGS.seeds,
               'pretrain_best_val_song_accuracy': pretrained['best_val_song_accuracy'],
               'song_accuracy': results}, f, indent=1)
  print(f'\n{FLAGS.source}: song accuracy on the target part, {FLAGS.folds}-fold x '
        f'{FLAGS.seeds} seeds\n')
  print('| arm | song accuracy (mean ± sd) | runs |')
  print('|---|---|---|')
  for arm in ARMS:
    if arm in results:
      print(f'| {arm} | {mean_sd(results[arm])} | {len(results[arm])} |')


if __name__ == '__main__':
  app.run(main)
