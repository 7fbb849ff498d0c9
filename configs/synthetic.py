"""The reference model on the built-in synthetic genre set: no download needed.

Sized so the whole run (cache build, training, evaluation) finishes within
10 minutes on a 2-core CPU: fewer and shorter songs, fewer epochs, and the
multi-stage schedule compressed to match. The model and features are the
reference ones.
"""

import importlib.util
import os


def _default():
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'default.py')
  spec = importlib.util.spec_from_file_location('melgenre_default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config():
  config = _default().get_config()
  config.data.source = 'synthetic'
  config.data.split = 'stratified'
  config.data.synthetic.songs_per_genre = 24
  config.data.synthetic.song_seconds = 12.0
  config.num_epochs = 12
  config.schedule.stage_ends = (2, 8, 10, 12)
  config.checkpoint.max_to_keep = 2
  return config
