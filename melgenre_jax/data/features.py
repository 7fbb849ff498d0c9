"""Log-mel front end: librosa's conventions, computed in JAX inside the compiled step.

The reference computes ``librosa.feature.melspectrogram`` (power 2, centred,
zero-padded frames, periodic Hann window) followed by
``librosa.power_to_db(S, ref=np.max)`` per clip. Doing the same on the
accelerator lets the data pipeline ship raw audio (and augment it on device);
``librosa_log_mel`` is the host path for ``config.features.where == 'host'``.
Both return the TIME-major layout ``[frames, n_mels]`` (``[B, frames, n_mels]``
batched), so a model never needs to know which path produced its input.

Speed notes: why the CPU path is shaped as it is. Each choice below won in
interleaved rounds of ``benchmarks/bench_features.py`` on XLA:CPU; the timings
are in benchmarks/README.md ("Measurements behind design choices").
  * framing: a reshape of hop-sized chunks beat a gather with a [frames, n_fft]
    index array, in wall and in CPU time, and never materialises an index
    array. Reshape is kept whenever hop divides n_fft; gather is the fallback.
  * each hop-sized view is windowed before the concatenation (fused into the
    slice) rather than after it: less CPU time.
  * one clip per ``lax.map`` step beat the whole batch in one step: one clip's
    frames ([1292, 2048] for 30 s at hop 512) stay near cache, a batch's do
    not, and the per-clip dB inside the step avoids four more passes over the
    output. CPU therefore maps over clips; GPU/TPU take the batch at once.
  * the mel basis is ~87% zeros: multiplying blocks of 16 mel bands by only the
    FFT bins they touch cuts the matmul from 131k to 17k MACs per frame (the
    clip gains less than that, as the FFT dominates). On GPU/TPU one dense
    matmul beats several small ones, so it stays dense there.
  * what is left is mostly the float32 ``jnp.fft.rfft``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import librosa
import numpy as np
import scipy.signal

MEL_NORMS = {'slaney': 'slaney', 'none': None}
# config.features.compression: 'db' = power_to_db(S, ref=max) per clip (the reference);
# 'log10_10000' = log10(10000 S + 1), musicnn's 'logC' (no reference level, no floor).
COMPRESSIONS = ('db', 'log10_10000')
_STD_FLOOR = 1e-5
# Mel bands per block of the block-sparse mel matmul (CPU only).
_MELS_PER_BLOCK = 16


def num_frames(num_samples: int, hop_length: int) -> int:
  """Frames librosa produces for ``center=True``: one per hop plus the first."""
  if hop_length <= 0:
    raise ValueError(f'hop_length must be > 0 (config.features.hop_length), got {hop_length}')
  return 1 + int(num_samples) // int(hop_length)


def _resolve_fmax(sample_rate: int, fmax: float) -> float:
  return float(sample_rate) / 2.0 if fmax <= 0 else float(fmax)


def _check_norm(norm: str) -> str | None:
  if norm not in MEL_NORMS:
    raise ValueError(
        f"config.features.mel_norm must be one of {sorted(MEL_NORMS)}, got {norm!r}")
  return MEL_NORMS[norm]


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float,
                   fmax: float, norm: str, htk: bool) -> np.ndarray:
  """librosa's mel filters, transposed to ``[n_fft // 2 + 1, n_mels]`` for ``power @ basis``.

  ``norm`` is 'slaney' or 'none'; ``fmax`` <= 0 means ``sample_rate / 2``.
  """
  if n_fft <= 0 or n_mels <= 0 or sample_rate <= 0:
    raise ValueError(
        'sample_rate, n_fft and n_mels must be > 0 (config.audio.sample_rate, '
        f'config.features.n_fft, config.features.n_mels), got {sample_rate}, {n_fft}, {n_mels}')
  basis = librosa.filters.mel(
      sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=float(fmin),
      fmax=_resolve_fmax(sample_rate, fmax), htk=bool(htk), norm=_check_norm(norm),
      dtype=np.float32)
  return np.ascontiguousarray(basis.T, dtype=np.float32)


def hann_window(n_fft: int) -> np.ndarray:
  """Periodic Hann window, exactly as librosa builds it (scipy, fftbins=True)."""
  return scipy.signal.get_window('hann', n_fft, fftbins=True).astype(np.float32)


def _frame_gather(padded: jax.Array, window: np.ndarray, hop_length: int,
                  frames: int) -> jax.Array:
  """[B, L] -> windowed [B, frames, n_fft] by indexing with a static [frames, n_fft] array."""
  n_fft = window.shape[0]
  idx = (np.arange(frames, dtype=np.int32)[:, None] * hop_length
         + np.arange(n_fft, dtype=np.int32)[None, :])
  return padded[:, idx] * window


def _frame_reshape(padded: jax.Array, window: np.ndarray, hop_length: int,
                   frames: int) -> jax.Array:
  """[B, L] -> windowed [B, frames, n_fft] from hop-sized chunks; needs ``n_fft % hop_length == 0``.

  Frame t is chunks t .. t + r - 1 (r = n_fft // hop), so the frames are the
  concatenation of r shifted views of the chunk array: no gather, no index
  array. Each view is multiplied by its own slice of the window before the
  concatenation, which XLA:CPU fuses into the slice (windowing after the
  concatenation costs one more pass over [frames, n_fft]).
  """
  n_fft = window.shape[0]
  r = n_fft // hop_length
  chunks = padded[:, :(frames + r - 1) * hop_length]
  chunks = chunks.reshape(padded.shape[0], frames + r - 1, hop_length)
  return jnp.concatenate(
      [chunks[:, j:j + frames] * window[j * hop_length:(j + 1) * hop_length] for j in range(r)],
      axis=-1)


def _mel_blocks(mel_basis: np.ndarray, mels_per_block: int) -> list[tuple[int, int, int, int]]:
  """Split the mel bands into contiguous blocks with the FFT-bin range each one touches.

  Returns (bin_start, bin_stop, mel_start, mel_stop) tuples; bins outside a
  block's range are exactly zero in its columns, so skipping them is exact.
  """
  n_mels = mel_basis.shape[1]
  nonzero = mel_basis != 0
  blocks = []
  for m0 in range(0, n_mels, mels_per_block):
    m1 = min(n_mels, m0 + mels_per_block)
    rows = np.flatnonzero(nonzero[:, m0:m1].any(axis=1))
    if rows.size:
      blocks.append((int(rows[0]), int(rows[-1]) + 1, m0, m1))
    else:  # empty filters (too many mels for n_fft): zeros, as librosa gives.
      blocks.append((0, 0, m0, m1))
  return blocks


def _mel_project(power: jax.Array, mel_basis: Any, block_sparse: bool) -> jax.Array:
  """power [..., bins] -> [..., n_mels]; exact float32 sums (no TF32/bf16 passes)."""
  precision = jax.lax.Precision.HIGHEST
  if not block_sparse or not isinstance(mel_basis, np.ndarray):
    return jnp.matmul(power, jnp.asarray(mel_basis, jnp.float32), precision=precision)
  outs = []
  for k0, k1, m0, m1 in _mel_blocks(mel_basis, _MELS_PER_BLOCK):
    if k1 == k0:
      outs.append(jnp.zeros(power.shape[:-1] + (m1 - m0,), power.dtype))
    else:
      outs.append(jnp.matmul(power[..., k0:k1], jnp.asarray(mel_basis[k0:k1, m0:m1]),
                             precision=precision))
  return jnp.concatenate(outs, axis=-1)


def _mel_power(waves: jax.Array, mel_basis: Any, n_fft: int, hop_length: int,
               framing: str, block_sparse: bool) -> jax.Array:
  """waves [B, S] -> mel power [B, frames, n_mels] (librosa melspectrogram, transposed)."""
  frames = num_frames(waves.shape[-1], hop_length)
  half = n_fft // 2
  padded = jnp.pad(waves, ((0, 0), (half, half)))  # center=True, pad_mode='constant'
  if framing == 'auto':
    framing = 'reshape' if n_fft % hop_length == 0 else 'gather'
  window = hann_window(n_fft)
  if framing == 'reshape':
    if n_fft % hop_length:
      raise ValueError(f"framing='reshape' needs hop_length ({hop_length}) to divide n_fft ({n_fft})")
    framed = _frame_reshape(padded, window, hop_length, frames)
  elif framing == 'gather':
    framed = _frame_gather(padded, window, hop_length, frames)
  else:
    raise ValueError(f"framing must be 'auto', 'reshape' or 'gather', got {framing!r}")
  spec = jnp.fft.rfft(framed, axis=-1)
  power = jnp.square(spec.real) + jnp.square(spec.imag)  # |X|^2 without a sqrt
  return _mel_project(power, mel_basis, block_sparse)


def power_to_db_per_clip(mel_power: jax.Array, *, amin: float, top_db: float) -> jax.Array:
  """``librosa.power_to_db(S, ref=np.max, amin, top_db)`` applied to each clip of [B, ...].

  An all-zero clip gives 0 dB everywhere (librosa's answer), never -inf/NaN.
  ``top_db <= 0`` disables the floor.
  """
  if amin <= 0:
    raise ValueError(f'amin must be > 0 (config.features.amin), got {amin}')
  axes = tuple(range(1, mel_power.ndim))
  ref = jnp.max(mel_power, axis=axes, keepdims=True)
  log_spec = 10.0 * jnp.log10(jnp.maximum(amin, mel_power))
  log_spec = log_spec - 10.0 * jnp.log10(jnp.maximum(amin, ref))
  # ref <= amin means every bin is <= amin, where librosa's answer is exactly 0;
  # say so explicitly (XLA's vector and scalar log can differ in the last ulp).
  log_spec = jnp.where(ref <= amin, 0.0, log_spec)
  if top_db > 0:
    log_spec = jnp.maximum(log_spec, jnp.max(log_spec, axis=axes, keepdims=True) - top_db)
  return log_spec


def compression_of(feature_cfg: Any) -> str:
  """``config.features.compression``, 'db' for configs written before it existed."""
  compression = str(getattr(feature_cfg, 'compression', 'db'))
  if compression not in COMPRESSIONS:
    raise ValueError(f'config.features.compression must be one of {list(COMPRESSIONS)}, '
                     f'got {compression!r}')
  return compression


def log10_10000(mel_power: Any) -> Any:
  """musicnn's 'logC' compression, in float32 (its extractor's float16 cast overflows)."""
  return jnp.log10(10000.0 * mel_power + 1.0)


def resample_fft(waves: jax.Array, num_samples: int) -> jax.Array:
  """``[B, S] -> [B, num_samples]``: band-limited resampling in the Fourier domain.

  scipy.signal.resample's method (keep or zero-fill the lowest bins, the
  Nyquist bin doubled when downsampling to an even length), in JAX so a
  compiled step can hand its batch to a model that hears another sample rate
  (a distillation teacher). It treats each clip as periodic, which only
  matters within a few samples of the edges.
  """
  old = waves.shape[-1]
  if num_samples == old:
    return waves
  spectrum = jnp.fft.rfft(waves.astype(jnp.float32), axis=-1)
  keep = min(num_samples, old) // 2 + 1
  bins = jnp.zeros(waves.shape[:-1] + (num_samples // 2 + 1,), spectrum.dtype)
  bins = bins.at[..., :keep].set(spectrum[..., :keep])
  if num_samples < old and num_samples % 2 == 0:
    bins = bins.at[..., num_samples // 2].multiply(2.0)
  return jnp.fft.irfft(bins, num_samples, axis=-1) * (num_samples / old)


def _on_cpu() -> bool:
  return jax.default_backend() == 'cpu'


def log_mel_spectrogram(waves: jax.Array, mel_basis: Any, *, n_fft: int, hop_length: int,
                        top_db: float, amin: float, framing: str = 'auto',
                        clips_per_step: int | None | str = 'auto',
                        block_sparse: bool | str = 'auto', compression: str = 'db') -> jax.Array:
  """waves [B, S] float32 -> log-mel dB [B, frames, n_mels], librosa-exact conventions.

  Args:
    waves: [B, S] audio.
    mel_basis: [n_fft // 2 + 1, n_mels] from ``mel_filterbank`` (a numpy array
      enables the block-sparse matmul; a jax array is used densely).
    n_fft, hop_length, top_db, amin: as ``config.features``.
    framing: 'reshape' (needs hop | n_fft), 'gather', or 'auto' (reshape when possible).
    clips_per_step: clips transformed together; the rest loop under ``lax.map``
      to keep the working set small. None: whole batch at once. 'auto': 1 on
      CPU, None elsewhere.
    block_sparse: skip the mel basis' zero blocks ('auto': on CPU only).
    compression: 'db' (power_to_db per clip) or 'log10_10000' (see COMPRESSIONS).
  """
  if waves.ndim != 2:
    raise ValueError(f'waves must be [batch, samples], got shape {waves.shape}')
  if n_fft <= 0 or hop_length <= 0:
    raise ValueError(f'n_fft and hop_length must be > 0, got {n_fft}, {hop_length}')
  if mel_basis.shape[0] != n_fft // 2 + 1:
    raise ValueError(
        f'mel_basis has {mel_basis.shape[0]} rows, expected n_fft // 2 + 1 = {n_fft // 2 + 1}')
  waves = jnp.asarray(waves, jnp.float32)
  if clips_per_step == 'auto':
    clips_per_step = 1 if _on_cpu() else None
  if block_sparse == 'auto':
    block_sparse = _on_cpu()

  def transform(w: jax.Array) -> jax.Array:
    # dB inside the step too: it is per clip anyway, and the [B, frames, mels]
    # result is then written once instead of passing over it four more times.
    power = _mel_power(w, mel_basis, n_fft, hop_length, framing, bool(block_sparse))
    if compression == 'log10_10000':
      return log10_10000(power)
    return power_to_db_per_clip(power, amin=amin, top_db=top_db)

  batch, samples = waves.shape
  if clips_per_step is None or clips_per_step >= batch:
    return transform(waves)
  steps = -(-batch // clips_per_step)
  if steps * clips_per_step != batch:  # zero clips are harmless (0 dB) and dropped below.
    waves = jnp.pad(waves, ((0, steps * clips_per_step - batch), (0, 0)))
  out = jax.lax.map(transform, waves.reshape(steps, clips_per_step, samples))
  return out.reshape((steps * clips_per_step,) + out.shape[2:])[:batch]


def make_frontend(audio_cfg: Any, feature_cfg: Any) -> Callable[[jax.Array], jax.Array]:
  """Build the mel basis once and return a pure ``waves [B, S] -> [B, frames, n_mels]``.

  The returned function closes over numpy constants only, so it can be called
  inside ``jit`` / ``shard_map`` (each device transforms its own shard).
  """
  mel_basis = mel_filterbank(
      sample_rate=int(audio_cfg.sample_rate), n_fft=int(feature_cfg.n_fft),
      n_mels=int(feature_cfg.n_mels), fmin=float(feature_cfg.fmin), fmax=float(feature_cfg.fmax),
      norm=str(feature_cfg.mel_norm), htk=bool(feature_cfg.htk))
  n_fft = int(feature_cfg.n_fft)
  hop_length = int(feature_cfg.hop_length)
  top_db = float(feature_cfg.top_db)
  amin = float(feature_cfg.amin)
  compression = compression_of(feature_cfg)
  num_frames(0, hop_length)  # validates hop_length early, with the field name.
  if amin <= 0:
    raise ValueError(f'config.features.amin must be > 0, got {amin}')

  def frontend(waves: jax.Array) -> jax.Array:
    return log_mel_spectrogram(waves, mel_basis, n_fft=n_fft, hop_length=hop_length,
                               top_db=top_db, amin=amin, compression=compression)

  return frontend


def librosa_log_mel(wave: np.ndarray, audio_cfg: Any, feature_cfg: Any) -> np.ndarray:
  """Host path (``config.features.where == 'host'``): librosa itself, [frames, n_mels] float32."""
  wave = np.asarray(wave, dtype=np.float32)
  if wave.ndim != 1:
    raise ValueError(f'librosa_log_mel takes one mono clip [samples], got shape {wave.shape}')
  sample_rate = int(audio_cfg.sample_rate)
  top_db = float(feature_cfg.top_db)
  mel_power = librosa.feature.melspectrogram(
      y=wave, sr=sample_rate, n_fft=int(feature_cfg.n_fft),
      hop_length=int(feature_cfg.hop_length), n_mels=int(feature_cfg.n_mels),
      fmin=float(feature_cfg.fmin), fmax=_resolve_fmax(sample_rate, float(feature_cfg.fmax)),
      norm=_check_norm(str(feature_cfg.mel_norm)), htk=bool(feature_cfg.htk), power=2.0,
      center=True, pad_mode='constant')
  if compression_of(feature_cfg) == 'log10_10000':
    return np.ascontiguousarray(np.log10(10000.0 * mel_power.T + 1.0), dtype=np.float32)
  db = librosa.power_to_db(mel_power, ref=np.max, amin=float(feature_cfg.amin),
                           top_db=top_db if top_db > 0 else None)
  return np.ascontiguousarray(db.T, dtype=np.float32)


def band_stats(features: np.ndarray | Iterable[Any]) -> tuple[np.ndarray, np.ndarray]:
  """Per-mel-band mean and std over every frame of the TRAINING features.

  ``features`` is one array [..., n_mels] or an iterable of such batches
  (streamed, so the training set need not fit in memory). Batches are merged
  with Chan et al.'s parallel update in float64, which stays exact-ish for dB
  values where a naive sum of squares would cancel.
  """
  batches = [features] if isinstance(features, (np.ndarray, jax.Array)) else features
  count, mean, m2 = 0, None, None
  for batch in batches:
    x = np.asarray(batch, dtype=np.float64)
    if x.ndim < 1 or x.size == 0:
      continue
    x = x.reshape(-1, x.shape[-1])
    if mean is not None and x.shape[1] != mean.shape[0]:
      raise ValueError(f'band_stats: batches disagree on n_mels ({mean.shape[0]} vs {x.shape[1]})')
    n_b = x.shape[0]
    mean_b = x.mean(axis=0)
    m2_b = np.square(x - mean_b).sum(axis=0)
    if mean is None:
      count, mean, m2 = n_b, mean_b, m2_b
      continue
    total = count + n_b
    delta = mean_b - mean
    mean = mean + delta * (n_b / total)
    m2 = m2 + m2_b + np.square(delta) * (count * n_b / total)
    count = total
  if mean is None:
    raise ValueError('band_stats got no features: pass the training split\'s log-mels')
  std = np.sqrt(m2 / count)
  return mean.astype(np.float32), std.astype(np.float32)


def normalize(features: jax.Array, mean: Any, std: Any) -> jax.Array:
  """Per-band standardisation ``(x - mean) / max(std, 1e-5)`` on [..., n_mels]."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.maximum(jnp.asarray(std, jnp.float32), _STD_FLOOR)
  return (features - mean) / std
