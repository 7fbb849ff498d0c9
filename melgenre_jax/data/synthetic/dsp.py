"""Rendering context, timing grid, phrase, and the low-level DSP every instrument uses."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

_TABLE_BITS = 11
_TABLE = 1 << _TABLE_BITS  # wavetable length: the top bits of a 32-bit phase index it
LAYERS = ('drums', 'bass', 'chords', 'lead', 'texture')


# ----------------------------------------------------------------------------
# Rendering context, timing grid and phrase.


@dataclasses.dataclass
class Ctx:
  """Per-song rendering state: the generator, sizes, and index/time ramps that every note slices."""
  rng: np.random.Generator
  sr: int
  num_samples: int  # length of the whole song
  bright: float  # per-song brightness factor on every filter cutoff
  _index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.uint32))
  _time: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

  def index(self, n: int) -> np.ndarray:
    """0..n-1 as uint32 (phase accumulators wrap modulo 2**32 by design)."""
    if n > self._index.shape[0]:
      self._index = np.arange(max(n, 2 * self._index.shape[0]), dtype=np.uint32)
      self._time = self._index.astype(np.float32) * np.float32(1.0 / self.sr)
    return self._index[:n]

  def time(self, n: int) -> np.ndarray:
    """Seconds of samples 0..n-1 (float32)."""
    self.index(n)
    return self._time[:n]


@dataclasses.dataclass(frozen=True)
class Score:
  """Timing grid of a phrase: ``num_bars`` bars of ``steps`` grid steps, integer samples per bar."""
  sr: int
  bar_len: int
  steps: int
  swing: float  # fraction of a step by which odd steps are late (16th swing)
  num_bars: int

  @property
  def length(self) -> int:
    return self.bar_len * self.num_bars

  @property
  def step_len(self) -> float:
    return self.bar_len / self.steps

  def at(self, bar: int, step: float) -> int:
    """Sample offset of grid position ``step`` in ``bar`` (may exceed the phrase: writes wrap)."""
    late = self.swing if float(step).is_integer() and int(step) % 2 == 1 else 0.0
    return bar * self.bar_len + int(round((step + late) * self.step_len))

  def dur(self, steps: float) -> int:
    return max(16, int(round(steps * self.step_len)))


def make_score(ctx: Ctx, bpm: float, steps: int, bars: int, swing: float = 0.0,
               beats: int = 4) -> Score:
  """Grid for a phrase of ``bars`` bars, capped to what the song needs (fewer bars render faster)."""
  bar_len = max(64, int(round(beats * 60.0 / bpm * ctx.sr)))
  needed = -(-ctx.num_samples // bar_len)
  return Score(sr=ctx.sr, bar_len=bar_len, steps=steps, swing=swing, num_bars=max(1, min(bars, needed)))


@dataclasses.dataclass
class Arrangement:
  """How a style tends to vary over the song (probabilities of sections)."""
  intro_prob: float = 0.4
  intro_keeps: tuple[str, ...] = ('chords', 'texture')  # layers that play in the intro
  break_prob: float = 0.4
  break_keeps: tuple[str, ...] = ('drums', 'bass', 'texture')
  lead_prob: float = 0.6  # chance a lead plays in a given phrase repeat


@dataclasses.dataclass
class Phrase:
  score: Score
  layers: dict[str, np.ndarray]
  levels: dict[str, float]
  arrangement: Arrangement
  snr_db: float  # background noise level under the music


def new_phrase(ctx: Ctx, score: Score, levels: dict[str, float], arrangement: Arrangement,
               snr_db: tuple[float, float] = (28.0, 55.0)) -> Phrase:
  layers = {name: np.zeros(score.length, np.float32) for name in LAYERS}
  return Phrase(score=score, layers=layers, levels=levels, arrangement=arrangement,
                snr_db=float(ctx.rng.uniform(*snr_db)))


# ----------------------------------------------------------------------------
# Low-level DSP: only SIMD-friendly numpy (no cumsum, no float64 trig, no bulk
# RNG draws: those are far slower per sample, see benchmarks/README.md); Python
# loops only over notes.


def midi_hz(midi: float) -> float:
  return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def add_looped(buf: np.ndarray, start: int, clip: np.ndarray, gain: float = 1.0) -> None:
  """buf[start:start+len(clip)] += gain * clip, wrapping around the end (the phrase is a loop)."""
  size = buf.shape[0]
  if clip.shape[0] > size:
    clip = clip[:size]
  start %= size
  end = start + clip.shape[0]
  gain = float(gain)  # a Python float keeps float32 arithmetic float32
  if end <= size:
    buf[start:end] += clip * gain if gain != 1.0 else clip
    return
  first = size - start
  buf[start:] += clip[:first] * gain
  buf[:end - size] += clip[first:] * gain


def _shift_add(y: np.ndarray, src: np.ndarray, delay: int, gain: float) -> None:
  """y += gain * src circularly delayed by ``delay`` samples (src must not alias y)."""
  delay %= y.shape[0]
  g = np.float32(gain)
  if delay == 0:
    y += g * src
    return
  y[delay:] += g * src[:-delay]
  y[:delay] += g * src[-delay:]


def decay_envelope(ctx: Ctx, n: int, tau: float) -> np.ndarray:
  return np.exp(ctx.time(n) * np.float32(-1.0 / max(tau, 1e-4)))


def declick(ctx: Ctx, env: np.ndarray, attack: float = 0.002, release: float = 0.004) -> np.ndarray:
  """Short linear fades at both ends so cut notes do not click."""
  n = env.shape[0]
  a = min(n // 2, max(1, int(attack * ctx.sr)))
  r = min(n // 2, max(1, int(release * ctx.sr)))
  ramp = ctx.time(max(a, r)) * np.float32(ctx.sr)
  env[:a] *= ramp[:a] * np.float32(1.0 / a)
  env[n - r:] *= ramp[r - 1::-1] * np.float32(1.0 / r)
  return env


def white_noise(ctx: Ctx, n: int) -> np.ndarray:
  """White noise in [-1, 1) from an integer hash (lowbias32) of the sample index: fast and seeded."""
  seed = np.uint32(ctx.rng.integers(0, 2**32))
  h = ctx.index(n) * np.uint32(0x9E3779B1) + seed
  h ^= h >> np.uint32(16)
  h *= np.uint32(0x7FEB352D)
  h ^= h >> np.uint32(15)
  h *= np.uint32(0x846CA68B)
  h ^= h >> np.uint32(16)
  return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -23) - np.float32(1.0)


def smooth(x: np.ndarray, octaves: int) -> np.ndarray:
  """Circular moving average over 2**octaves samples (a cheap low-pass), by repeated doubling."""
  y = x
  for k in range(octaves):
    y = y + np.roll(y, 1 << k)
  return y * np.float32(0.5 ** octaves) if octaves else y


def highpass(x: np.ndarray) -> np.ndarray:
  """Second difference: +12 dB/octave, leaves only the hiss (hats, cymbals)."""
  y = np.zeros_like(x)
  y[2:] = x[2:] - 2 * x[1:-1] + x[:-2]
  return y * np.float32(0.25)


def room(ctx: Ctx, x: np.ndarray, wet: float, size_s: float, stages: int = 3) -> np.ndarray:
  """Reverb-ish smoothing: a low-passed send through a cascade of circular echoes (2**stages taps)."""
  if wet <= 0.0 or x.shape[0] < 64:
    return x
  rng = ctx.rng
  send = smooth(x, int(rng.integers(1, 4)))
  echoes = np.roll(send, int(ctx.sr * rng.uniform(0.01, 0.03)))
  for k in range(stages):
    delay = int(ctx.sr * size_s * rng.uniform(0.5, 1.0) / (1 << k))
    src = echoes.copy()
    _shift_add(echoes, src, delay, rng.uniform(0.4, 0.7))
  return x + echoes * np.float32(wet / (1.55 ** stages))


def distort(x: np.ndarray, drive: float) -> np.ndarray:
  """Soft clipping (tanh) after normalising, so ``drive`` means the same at any level."""
  peak = float(max(x.max(), -x.min()))
  if peak <= 0:
    return x
  return np.tanh(x * np.float32(drive / peak)) * np.float32(peak)


def presence(x: np.ndarray, amount: float) -> np.ndarray:
  """Treble lift (x plus its first difference): the bite of a guitar cabinet."""
  y = x * np.float32(1.0 + amount)
  y[1:] -= x[:-1] * np.float32(amount)
  return y


def wavetable(ratios: Sequence[int], amps: np.ndarray, f0: float, sr: int, cutoff_hz: float,
              rng: np.random.Generator) -> np.ndarray:
  """One period of a (chord) tone whose common fundamental is ``f0``.

  Partial h of chord tone r sits at bin r*h; a 4-pole-like roll-off above
  ``cutoff_hz`` plays the filter, and nothing at or above 0.45*sr is written
  (no aliasing at any sample rate).
  """
  spec = np.zeros(_TABLE // 2 + 1, np.complex128)
  harmonics = np.arange(1, amps.shape[0] + 1)
  phases = rng.uniform(0.0, 2.0 * np.pi, (len(ratios), amps.shape[0]))
  for ratio, phase in zip(ratios, phases):
    bins = ratio * harmonics
    hz = bins * f0
    keep = (hz < 0.45 * sr) & (bins < _TABLE // 2)
    gain = amps / (1.0 + (hz / cutoff_hz) ** 4)
    spec[bins[keep]] += (gain * np.exp(1j * phase))[keep]
  table = np.fft.irfft(spec, _TABLE)
  peak = float(np.abs(table).max())
  return (table / peak if peak > 0 else table).astype(np.float32)


def _phase_index(ctx: Ctx, hz: float, n: int) -> np.ndarray:
  """Table indices of a tone at ``hz``: a 32-bit phase accumulator that wraps exactly (no drift)."""
  inc = np.uint32(int(round(hz / ctx.sr * 2.0**32)) % 2**32)
  return (ctx.index(n) * inc) >> np.uint32(32 - _TABLE_BITS)


def osc(ctx: Ctx, table: np.ndarray, hz: float, n: int) -> np.ndarray:
  """Steady tone: one ~0.5 s loop of a whole number of periods, tiled (a memcpy, not a gather).

  The loop's pitch is off by under 0.1 cent (half a sample over the loop), and
  it joins seamlessly because the phase wraps exactly after the loop.
  """
  cycles = max(1, round(hz * 0.5))
  loop = int(round(cycles * ctx.sr / hz))
  if n <= 2 * loop:
    return np.take(table, _phase_index(ctx, hz, n))
  return np.resize(np.take(table, _phase_index(ctx, cycles * ctx.sr / loop, loop)), n)


def vibrato_phase(ctx: Ctx, n: int, rate: float, delay: float) -> np.ndarray:
  """Vibrato phase deviation in cycles per Hz of depth: the integral of a sine that fades in after ``delay``."""
  t = ctx.time(n)
  onset = np.clip((t - np.float32(delay)) * np.float32(1 / 0.3), 0.0, 1.0)
  return onset * (np.float32(1.0) - np.cos(t * np.float32(2 * np.pi * rate))) * np.float32(1 / (2 * np.pi * rate))


def osc_vibrato(ctx: Ctx, table: np.ndarray, hz: float, n: int, wobble: np.ndarray, cents: float) -> np.ndarray:
  """Oscillator whose pitch wobbles by ``cents`` along ``wobble`` (bowed strings, voices, bends)."""
  depth = hz * (2.0 ** (cents / 1200.0) - 1.0)
  offset = (wobble[:n] * np.float32(depth * _TABLE)).astype(np.int32)
  offset += _phase_index(ctx, hz, n).view(np.int32)
  offset &= np.int32(_TABLE - 1)
  return np.take(table, offset)
