"""Fine-tune the MSD-pretrained musicnn tagger on your genres (issue #31).

  python main.py --config configs/musicnn_finetune.py --workdir runs/ft \
      --config.data.root=/path/to/music
  python main.py --config configs/musicnn_finetune.py --mode=cv --workdir runs/ft_cv \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv

``init_from='musicnn:MSD_musicnn'`` imports the tagger once into the cache
(the wheel is fetched with pip, as ``--mode=import`` does) and starts from its
weights; the 50-tag head is replaced by a fresh genre head. The front end
(its timbral and temporal convolutions) stays as imported. The recipe is
"probe, then fine-tune": for the first 8 epochs only the head trains (a
linear probe of the imported embedding), then the mid end and back end join at
a twentieth of the head's rate. Chosen by measurement on 409 real 2-3 s GTZAN
excerpts, 5 folds by artist x 3 seeds (docs/transfer.md has the table and the
runs behind each choice). ``--mode=cv`` trains each fold on all of its
training songs and tests the last epoch (``cv.validation_fraction=0``): the
recipe is fixed, so no songs need to be kept aside to choose an epoch. A
``--mode=train`` run still validates (``data.validation_fraction``), which
gives its curves and its calibration.
"""

from configs import musicnn  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = musicnn.get_config()
  config.task = 'genre'
  config.data.source = 'folder'
  config.data.root = ''  # required for 'folder': --config.data.root=/path/to/music
  config.data.split = 'stratified'
  # musicnn's training rule for clips shorter than its 3 s window: repeat them.
  config.audio.short_clip = 'repeat'

  config.init_from = 'musicnn:MSD_musicnn'
  config.model.frozen = 'frontend'
  config.finetune.freeze_backbone_epochs = 8
  config.finetune.backbone_lr_multiplier = 0.05

  config.num_epochs = 20
  config.schedule.stage_ends = (2, 14, 17, 20)
  config.schedule.stage_start_lrs = (1e-4, 3e-3, 1e-3, 1e-3)
  config.schedule.stage_end_lrs = (3e-3, 3e-3, 1e-3, 1e-4)
  # The imported running statistics fit the pretrained layers; the trained
  # layers' statistics follow them at BatchNorm's momentum.
  config.bn_recompute_batches = 0
  config.checkpoint.max_to_keep = 2
  config.cv.validation_fraction = 0.0
  return config
