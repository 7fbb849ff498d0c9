"""Your own music: ROOT/<genre>/**/<song files>, stratified split by song.

  python main.py --config configs/folder.py --config.data.root=/path/to/music \
      --workdir runs/mine

Genres are the top-level folder names; nested folders are fine. Songs are
split by song (seeded, stratified by genre) with the default fractions.
"""

from configs import default  # main.py's folder (the repo root) is on sys.path

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.data.source = 'folder'
  config.data.root = ''  # required: --config.data.root=/path/to/music
  config.data.split = 'stratified'
  return config
