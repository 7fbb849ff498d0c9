"""The recipe for little labelled data (tens to a few hundred songs or clips).

  python main.py --config configs/small_data.py --mode=cv --workdir runs/cv \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv

Today this is the reference recipe on your own songs (configs/folder.py: 50
epochs, 3 s segments, BatchNorm statistics recomputed before every
evaluation), because none of the levers measured so far beat it: weight
averaging, label smoothing, mixup, SpecAugment, more or no dropout and L2, a
smaller or wider model, batch 8, twice the learning rate, twice the epochs,
running BatchNorm averages, standardised bands, and shorter windows at random
offsets alone or combined all landed within one standard deviation of it or
below (5-fold by artist on 409 real 2-3 s GTZAN excerpts; the table and
commands are in docs/small_data.md), and it scores what MFCC statistics
+ logistic regression score on the same folds (benchmarks/bench_baselines.py
prints that bar for any manifest or folder). What did help on the same clips is
a backbone pretrained on other artists (config.init_from, docs/transfer.md).
Each lever is a command-line override: --config.ema_decay=0.99,
--config.optim.label_smoothing=0.1, --config.audio.train_offsets=random,
--config.augment.time_masks=2, ...
"""

from configs import folder  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = folder.get_config()
  config.checkpoint.max_to_keep = 2  # many small runs (cv folds): keep little
  return config
