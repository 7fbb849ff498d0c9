"""The reference CRNN taught by the MSD-pretrained musicnn tagger (issue #31).

  python main.py --config configs/distill_crnn.py --mode=cv --workdir runs/distill_cv \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv

The small-data recipe (configs/small_data.py) with one addition: every
training song also carries musicnn's penultimate embedding of it (computed once
and cached), which the CRNN learns to predict from its own embedding beside
its genre (melgenre_jax/train/distill.py). The model that predicts, exports
and serves is the unchanged reference plus one unused dense layer.
--config.distill.consistent=True runs the teacher in every train step on the
student's own augmented audio instead (docs/transfer.md has both measured).
"""

from configs import small_data  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = small_data.get_config()
  config.distill.teacher = 'musicnn:MSD_musicnn'
  config.distill.target = 'embedding'
  config.distill.weight = 1.0
  config.model.distill_outputs = 200  # musicnn's penultimate width
  return config
