"""Frozen pretrained embeddings + logistic regression on ``--mode=cv``'s folds (issue #31).

  python benchmarks/bench_pretrained.py --config configs/small_data.py \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv \
      --cv_workdir=runs/ft_cv [--models=MSD_musicnn --models=MTT_musicnn] [--out=r.json]

Each model is imported from the musicnn wheel (``config.init_from``'s import:
once, into the cache), every song is embedded with the Flax port
(``modes.embed.embed_songs``: the penultimate layer, averaged over the song's
3 s windows; clips shorter than a window are repeated, musicnn's own rule),
and the embeddings are scored exactly as benchmarks/bench_baselines.py scores
MFCCs: standardised logistic regression, C by an inner group CV on each
training side, on the cv run's folds (``--cv_workdir``: its
``cv/folds.json``, so every row of the table sees the same test songs), with
that run's per-fold scores paired. ``msd+mtt`` concatenates the two.
``--layer=pooled`` embeds the pooled features (pool_bn, 1506 values) instead.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import ml_collections  # noqa: E402
from ml_collections import config_flags  # noqa: E402
import numpy as np  # noqa: E402

import bench_baselines  # noqa: E402
from configs import musicnn as musicnn_config  # noqa: E402
from melgenre_jax import errors  # noqa: E402
from melgenre_jax import inference  # noqa: E402
from melgenre_jax import workdir as workdir_lib  # noqa: E402
from melgenre_jax.data import sources  # noqa: E402
from melgenre_jax.data import splits  # noqa: E402
from melgenre_jax.data.songs import Song  # noqa: E402
from melgenre_jax.modes import embed  # noqa: E402
from melgenre_jax.pretrained import musicnn  # noqa: E402


def pooled_features(model: inference.InferenceModel) -> inference.InferenceModel:
  """The same model, its embed step returning pool_bn's output (the pooled features)."""
  apply_fn = model.apply_fn

  def pooled(variables, x, train=False, return_embedding=True):
    (logits, _), state = apply_fn(variables, x, train=train, return_embedding=return_embedding,
                                  capture_intermediates=lambda m, _: m.name == 'pool_bn',
                                  mutable=['intermediates'])
    return logits, state['intermediates']['pool_bn']['__call__'][0]
  return dataclasses.replace(model, apply_fn=pooled)


def embed_with(model_name: str, songs: Sequence[Song], layer: str = 'penultimate'
               ) -> tuple[np.ndarray, list[bool]]:
  """Song-mean embeddings (``layer``) of ``songs`` by the imported ``model_name``; decoded mask."""
  base = musicnn_config.get_config()
  workdir = musicnn.imported_workdir(f'{musicnn.PACKAGE}:{model_name}', base)
  config = workdir_lib.load_workdir_config(workdir)
  config.audio.short_clip = 'repeat'  # musicnn's rule for clips shorter than its window
  model = inference.load_for_inference(config, workdir)
  if layer == 'pooled':
    model = pooled_features(model)
  vectors, rows = embed.embed_songs(model, [s.path for s in songs])
  ok = [r['ok'] for r in rows]
  if len(rows) != len(songs):
    raise errors.DataError(f'{model_name}: {len(rows)} rows for {len(songs)} songs '
                           '(two songs share a file?)')
  return vectors.astype(np.float64), ok


def run(config: ml_collections.ConfigDict, cv_workdir: str, model_names: Sequence[str],
        layer: str = 'penultimate') -> tuple[dict, str]:
  """Scores every model's embeddings (and the concatenation) on the cv run's folds."""
  songs = sorted(sources.discover_songs(config), key=lambda s: s.key)
  unit, fold_of, seeds, summary = bench_baselines.cv_folds(cv_workdir, songs)
  feats, ok = {}, np.ones(len(songs), bool)
  for name in model_names:
    vectors, decoded = embed_with(name, songs, layer)
    full = np.zeros((len(songs), vectors.shape[1]))
    full[np.asarray(decoded)] = vectors
    feats[name], ok = full, ok & np.asarray(decoded)
  if len(model_names) > 1:
    feats['+'.join(model_names)] = np.concatenate([feats[n] for n in model_names], axis=1)
  kept = [s for s, good in zip(songs, ok) if good]
  genres = sorted({s.genre for s in songs})
  y = np.asarray([genres.index(s.genre) for s in kept])
  units = kept if unit == 'group' else splits.ungrouped(kept)
  groups = np.asarray([splits.unit_key(s) for s in units])
  folds = np.asarray([fold_of[s.key] for s in kept])
  scores = {n: bench_baselines.score_folds(x[ok], y, groups, folds, seeds)
            for n, x in feats.items()}
  report = (f'{len(kept)} of {len(songs)} songs embedded ({layer}), {len(genres)} genres, folds of '
            f'{cv_workdir} by {unit}, seeds {seeds}; C from '
            f'{list(bench_baselines.C_GRID)} by an inner CV on each training side\n'
            + bench_baselines.table(scores, summary).replace(
                '| features + logistic regression |', '| frozen embedding + logistic regression |'))
  return {'fold_unit': unit, 'seeds': seeds, 'num_songs': len(kept),
          'results': scores}, report


def main(argv: Sequence[str]) -> None:
  del argv
  flags_ = flags.FLAGS
  bench_baselines.report_run(
      lambda: run(flags_.config, flags_.cv_workdir, flags_.models, flags_.layer), flags_.out)


if __name__ == '__main__':
  config_flags.DEFINE_config_file('config', 'configs/small_data.py',
                                  'Config file (its data settings).', lock_config=True)
  flags.DEFINE_string('cv_workdir', None, 'A --mode=cv workdir: its folds, its scores paired.',
                      required=True)
  flags.DEFINE_multi_string('models', ['MSD_musicnn', 'MTT_musicnn'],
                            f'musicnn models to embed with ({", ".join(musicnn.MODELS)}).')
  flags.DEFINE_enum('layer', 'penultimate', ['penultimate', 'pooled'],
                    "What to embed: the penultimate layer (the tags' input) or the pooled "
                    'features before it (model.head_input).')
  flags.DEFINE_string('out', None, 'Write the results here as JSON.')
  app.run(main)
