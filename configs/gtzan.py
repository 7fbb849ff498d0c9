"""GTZAN with Kereliuk et al.'s fault-filtered split (443/197/290 songs).

  python main.py --config configs/gtzan.py --config.data.root=/path/to/gtzan \
      --workdir runs/gtzan

The root may hold genres/ (original .au), genres_original/ (Kaggle .wav), a
Data/ folder around either, or be the genres folder itself. Other published
splits: --config.data.split=gtzan_stratified, or gtzan_artist_3fold with
--config.data.fold=0|1|2.
"""

from configs import default  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = 'gtzan'
  config.data.root = ''  # required: --config.data.root=/path/to/gtzan
  config.data.split = 'gtzan_fault_filtered'
  return config
