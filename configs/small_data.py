"""A recipe for little labelled data (tens to a few hundred songs or clips).

  python main.py --config configs/small_data.py --mode=cv --workdir runs/cv \
      --config.data.source=manifest --config.data.manifest=/path/to/manifest.csv

The reference model, trained so that a few hundred short clips teach it
something: standardised mel bands and a fast BatchNorm average (statistics are
also recomputed before every evaluation), short overlapping windows moved to
fresh random offsets every epoch, SpecAugment masks and label smoothing. Each
choice was measured on and off with --mode=cv (README, "Small data").
"""

from configs import default  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = 'folder'
  config.data.split = 'stratified'
  config.data.min_song_seconds = 1.0
  # 1.5 s windows every 0.75 s: a 3 s clip gives three, a 30 s song 39.
  config.audio.segment_seconds = 1.5
  config.audio.segment_hop_seconds = 0.75
  config.audio.train_offsets = 'random'
  config.audio.short_clip = 'repeat'
  config.features.normalize = True
  config.model.batchnorm_momentum = 0.9
  config.augment.time_masks = 2
  config.augment.time_mask_frames = 8
  config.augment.freq_masks = 2
  config.augment.freq_mask_bins = 12
  config.optim.label_smoothing = 0.1
  config.num_epochs = 30
  # The reference's shape (warm-up, plateau, lower plateau, anneal) over 30 epochs.
  config.schedule.stage_ends = (3, 24, 27, 30)
  config.checkpoint.max_to_keep = 2
  return config
