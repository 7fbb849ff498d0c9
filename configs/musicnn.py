"""musicnn taggers (issue #31): the family's input format and model settings.

The input format is the one the MSD/MTT checkpoints were trained on (musicnn
0.1.0's configuration.py and extractor.py): 16 kHz mono, librosa's mel
spectrogram with n_fft 512, hop 256, 96 Slaney mel bands up to 8 kHz (power
2, centred, periodic Hann), then ``log10(10000 mel + 1)`` ('logC'), with no
per-band standardisation. A segment is 187 frames: 47,616 samples (2.976 s),
the shortest length that gives 187 centred frames at hop 256.
``--mode=import`` writes this config into the imported workdir.
"""

import ml_collections

from configs import default

SAMPLE_RATE = 16000
HOP = 256
FRAMES = 187


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.task = 'multilabel'

  config.audio.sample_rate = SAMPLE_RATE
  config.audio.segment_seconds = (FRAMES - 1) * HOP / SAMPLE_RATE  # 2.976 s -> 187 frames
  config.audio.segment_hop_seconds = config.audio.segment_seconds

  config.features.n_fft = 512
  config.features.hop_length = HOP
  config.features.n_mels = 96
  config.features.fmin = 0.0
  config.features.fmax = 0.0  # sample_rate / 2 = 8 kHz, librosa's default
  config.features.mel_norm = 'slaney'
  config.features.htk = False
  config.features.compression = 'log10_10000'
  config.features.normalize = False

  # The reference's crnn fields stay (unused by this family; config_checks validates them).
  config.model.name = 'musicnn'
  config.model.frontend_filters = 1.6  # x 128 timbral, x 32 temporal filters
  config.model.midend_filters = 64
  config.model.backend_units = 200  # the penultimate layer: the embedding
  config.model.dropout = 0.5
  config.model.batchnorm_momentum = 0.99
  config.model.bn_epsilon = 1e-3
  config.model.dtype = 'float32'
  config.model.frozen = ''  # 'input_bn' | 'frontend' | 'backbone': kept as imported (models/musicnn.py)
  config.model.head_input = 'penultimate'  # | 'pooled': what a new head reads (models/musicnn.py)
  # One CPU device on all cores: these convolutions are large enough for XLA to
  # split over the cores itself, and one device does not pad a single window
  # to two (benchmarks/bench_musicnn_flax.py --cpu_devices; docs/transfer.md).
  config.cpu_devices = 1
  return config
