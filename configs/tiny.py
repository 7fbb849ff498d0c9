"""A minutes-scale smoke run: tiny model, tiny synthetic set, low sample rate.

Used by the tests and handy for checking an install end to end
(python main.py --config configs/tiny.py --workdir /tmp/tiny). Not a recipe:
its accuracy means nothing.
"""

from configs import default  # main.py's folder (the repo root) is on sys.path


def get_config():
  config = default.get_config()
  config.data.source = 'synthetic'
  config.data.synthetic.songs_per_genre = 5
  config.data.synthetic.num_genres = 4
  config.data.synthetic.song_seconds = 3.0
  config.data.validation_fraction = 0.2
  config.data.test_fraction = 0.2
  config.data.cache_workers = 0
  config.audio.sample_rate = 8000
  config.audio.segment_seconds = 1.0
  config.audio.segment_hop_seconds = 1.0
  config.features.n_fft = 256
  config.features.hop_length = 128
  config.features.n_mels = 32
  config.model.conv_features = 4
  config.model.lstm_sizes = (8, 4)
  config.batch_size = 8
  config.eval_batch_size = 8
  config.num_epochs = 2
  config.schedule.stage_ends = (1, 2)
  config.schedule.stage_start_lrs = (1e-3, 1e-3)
  config.schedule.stage_end_lrs = (1e-3, 5e-4)
  config.progress_bar = False
  config.log_every_steps = 1
  return config
