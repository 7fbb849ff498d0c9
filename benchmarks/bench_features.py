"""Log-mel throughput: librosa on the host vs. the JAX front end (issue 4).

Run from the repository root:  python benchmarks/bench_features.py
Prints clips/second for 30 s clips at the reference settings (config.audio,
config.features of configs/default.py). Methods are timed in interleaved rounds
(so a busy machine slows all of them alike) and the median round is reported.
JAX timings exclude compilation (one warm-up call) and block until ready.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import librosa  # noqa: E402
import numpy as np  # noqa: E402

from configs import default as default_config  # noqa: E402
from melgenre_jax.data import features  # noqa: E402

_SECONDS = flags.DEFINE_float('seconds', 30.0, 'Clip length in seconds.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Large JAX batch size.')
_LIBROSA_CLIPS = flags.DEFINE_integer('librosa_clips', 4, 'Clips per round for the librosa rows.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rounds; the median is reported.')
_VARIANTS = flags.DEFINE_bool(
    'variants', True,
    'Also time JAX implementation variants: framing and mel matmul at --batch; the whole '
    'batch in one step vs. one clip per lax.map step at batch 8.')


def _librosa_single(waves: np.ndarray, cfg) -> None:
  for wave in waves:
    features.librosa_log_mel(wave, cfg.audio, cfg.features)


def _librosa_batched(waves: np.ndarray, cfg) -> None:
  """librosa's own batched call: melspectrogram on [B, S] (dB per clip afterwards, as the JAX path)."""
  f = cfg.features
  mel_power = librosa.feature.melspectrogram(
      y=waves, sr=cfg.audio.sample_rate, n_fft=f.n_fft, hop_length=f.hop_length, n_mels=f.n_mels,
      fmin=f.fmin, fmax=f.fmax or cfg.audio.sample_rate / 2, norm=f.mel_norm if f.mel_norm != 'none' else None,
      htk=f.htk, power=2.0, center=True, pad_mode='constant')
  for clip in mel_power:
    librosa.power_to_db(clip, ref=np.max, amin=f.amin, top_db=f.top_db if f.top_db > 0 else None)


def _jax_runner(fn: Callable[[jax.Array], jax.Array], waves: np.ndarray) -> Callable[[], None]:
  compiled = jax.jit(fn)
  device_waves = jax.device_put(jnp.asarray(waves))
  compiled(device_waves).block_until_ready()  # compile, untimed
  return lambda: compiled(device_waves).block_until_ready()


def _variant(cfg, **kwargs) -> Callable[[jax.Array], jax.Array]:
  f = cfg.features
  basis = features.mel_filterbank(cfg.audio.sample_rate, f.n_fft, f.n_mels, f.fmin, f.fmax,
                                  f.mel_norm, f.htk)
  return lambda w: features.log_mel_spectrogram(
      w, basis, n_fft=f.n_fft, hop_length=f.hop_length, top_db=f.top_db, amin=f.amin, **kwargs)


def main(argv: list[str]) -> None:
  del argv
  cfg = default_config.get_config()
  rng = np.random.default_rng(0)
  samples = int(round(_SECONDS.value * cfg.audio.sample_rate))
  batch = _BATCH.value
  waves = (0.1 * rng.standard_normal((batch, samples))).astype(np.float32)
  single = waves[:_LIBROSA_CLIPS.value]
  frontend = features.make_frontend(cfg.audio, cfg.features)

  # (name, batch, clips per call, call)
  methods = [
      ('librosa, one clip at a time', 1, len(single), lambda: _librosa_single(single, cfg)),
      ('librosa, batched [B,S] call', len(single), len(single), lambda: _librosa_batched(single, cfg)),
      ('JAX make_frontend', 1, 1, _jax_runner(frontend, waves[:1])),
      ('JAX make_frontend', batch, batch, _jax_runner(frontend, waves)),
  ]
  if _VARIANTS.value:
    small = min(batch, 8)  # the slow whole-batch variant at a smaller batch keeps the run short
    for label, b, kwargs in [
        ('JAX framing=gather', batch, dict(framing='gather')),
        ('JAX framing=reshape', batch, dict(framing='reshape')),
        ('JAX dense mel matmul', batch, dict(block_sparse=False)),
        ('JAX whole batch at once', small, dict(clips_per_step=None)),
        ('JAX one clip per lax.map step', small, {}),
    ]:
      methods.append((label, b, b, _jax_runner(_variant(cfg, **kwargs), waves[:b])))

  for _, _, _, call in methods[:2]:  # librosa's first call pays for lazy imports and caches
    call()
  times = {i: [] for i in range(len(methods))}
  for _ in range(_REPEATS.value):
    for i, (_, _, _, call) in enumerate(methods):
      start = time.perf_counter()
      call()
      times[i].append(time.perf_counter() - start)

  device = jax.devices()[0]
  thread_env = {k: os.environ.get(k, '-') for k in
                ('XLA_FLAGS', 'OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS')}
  print(f'log-mel throughput: {_SECONDS.value:g} s clips @ {cfg.audio.sample_rate} Hz, '
        f'n_fft {cfg.features.n_fft}, hop {cfg.features.hop_length}, {cfg.features.n_mels} mels, '
        f'median of {_REPEATS.value} interleaved rounds')
  print(f'JAX {jax.__version__} on {device.platform} ({device.device_kind}); librosa {librosa.__version__}; '
        f'numpy {np.__version__}; {platform.processor() or platform.machine()}')
  print(f'CPUs: os.cpu_count()={os.cpu_count()}, usable={len(os.sched_getaffinity(0))}; '
        f'load average at end {os.getloadavg()[0]:.2f}; threads: '
        + ', '.join(f'{k}={v}' for k, v in thread_env.items()))
  print()
  header = f'| {"method":32s} | {"batch":>5s} | {"clips/s":>8s} | {"ms/clip":>8s} | {"ms/clip min-max":>15s} |'
  print(header)
  print('|' + '|'.join('-' * (len(c) + 0) for c in header.split('|')[1:-1]) + '|')
  rates = {}
  for i, (name, b, clips, _) in enumerate(methods):
    per_clip = [t / clips for t in times[i]]
    median = statistics.median(per_clip)
    rates[(name, b)] = 1.0 / median
    print(f'| {name:32s} | {b:5d} | {1.0 / median:8.1f} | {median * 1e3:8.1f} | '
          f'{min(per_clip) * 1e3:6.1f}-{max(per_clip) * 1e3:<8.1f} |')
  ratio = rates[('JAX make_frontend', batch)] / rates[('librosa, one clip at a time', 1)]
  print()
  print(f'JAX batch {batch} / librosa single clip throughput: {ratio:.1f}x '
        f'(target >= 3x: {"met" if ratio >= 3 else "MISSED"})')


if __name__ == '__main__':
  app.run(main)
