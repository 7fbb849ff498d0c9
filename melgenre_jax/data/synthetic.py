"""Built-in synthetic genre set: ten synthesised music styles, rendered on the fly.

Why it exists: a new user's first run must train without downloading anything,
and the task must still be real: styles differ the way genres do (tempo range,
drum pattern, bass line, harmony, timbre) while per-song randomness (key, tempo,
mix levels, room, brightness, noise floor, arrangement) lets neighbouring
styles overlap, so a model has to learn time-frequency patterns rather than a
single trivial cue.

How it stays fast (a 30 s song costs roughly 40 numpy passes over its samples:
15-35 ms of CPU on a slow, shared 2-core box): a song is a loop of a few bars
(a *phrase*) rendered once into per-layer buffers (drums, bass, chords, lead,
texture) with wavetable oscillators and short one-shot drum samples, then laid
out bar by bar with per-bar arrangement gains (intros, breakdowns). Every
effect on the phrase is circular, so repeats join seamlessly. Chords use one
wavetable per chord: in just intonation the chord tones are harmonics of a
common fundamental (a major triad is 4:5:6), so one table lookup renders the
whole chord.

Determinism: the per-song generator is seeded from a SHA-256 of the song key,
so the same key always gives bit-identical audio (on one platform).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

from melgenre_jax.data.songs import Song

GENRES: tuple[str, ...] = (
    'ambient', 'blues', 'classical', 'disco', 'funk',
    'hiphop', 'jazz', 'metal', 'reggae', 'rock',
)

_KEY_RE = re.compile(r'^synthetic/([a-z]+)/(\d+)$')
_TABLE_BITS = 11
_TABLE = 1 << _TABLE_BITS  # wavetable length: the top bits of a 32-bit phase index it
_LAYERS = ('drums', 'bass', 'chords', 'lead', 'texture')

# Chord qualities as just-intonation ratios over a common fundamental (lowest tone first).
_CHORDS: dict[str, tuple[int, ...]] = {
    'maj': (4, 5, 6),
    'min': (10, 12, 15),
    'pow': (2, 3, 4),  # root, fifth, octave
    'dom7': (4, 5, 6, 7),
    'min7': (10, 12, 15, 18),
    'maj7': (8, 10, 12, 15),
    'dom9': (8, 10, 12, 14, 18),
    'min9': (20, 24, 30, 36, 45),
    'sus2': (8, 9, 12),
    'note': (1,),
}
_MAJOR = (0, 2, 4, 5, 7, 9, 11)
_MINOR = (0, 2, 3, 5, 7, 8, 10)
_PENT_MINOR = (0, 3, 5, 7, 10)
_PENT_MAJOR = (0, 2, 4, 7, 9)
_DORIAN = (0, 2, 3, 5, 7, 9, 10)


# ----------------------------------------------------------------------------
# Song list and key handling.


def list_synthetic_songs(songs_per_genre: int, num_genres: int = 10) -> list[Song]:
  """Songs of the built-in set: ``synthetic/<genre>/<index:04d>`` for the first ``num_genres`` styles."""
  if isinstance(num_genres, bool) or not isinstance(num_genres, int) or not 2 <= num_genres <= len(GENRES):
    raise ValueError(
        f'config.data.synthetic.num_genres must be an integer in 2..{len(GENRES)}, got {num_genres!r}.')
  if isinstance(songs_per_genre, bool) or not isinstance(songs_per_genre, int) or songs_per_genre < 1:
    raise ValueError(
        f'config.data.synthetic.songs_per_genre must be an integer >= 1, got {songs_per_genre!r}.')
  return [
      Song(key=f'synthetic/{genre}/{index:04d}', path='', genre=genre, group=None, split=None)
      for genre in GENRES[:num_genres]
      for index in range(songs_per_genre)
  ]


def _parse_key(key: str) -> str:
  """Genre of a synthetic song key; rejects anything not made by list_synthetic_songs."""
  match = _KEY_RE.match(key) if isinstance(key, str) else None
  if match is None:
    raise ValueError(f'Malformed synthetic song key {key!r}: expected "synthetic/<genre>/<index>", '
                     f'e.g. "synthetic/{GENRES[0]}/0000".')
  genre = match.group(1)
  if genre not in GENRES:
    raise ValueError(f'Unknown synthetic genre {genre!r} in key {key!r}; allowed: {", ".join(GENRES)}.')
  return genre


def _rng_for_key(key: str) -> np.random.Generator:
  """Per-song generator from a stable hash (Python's hash() is salted per process)."""
  digest = hashlib.sha256(key.encode('utf-8')).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], 'little'))


def synthesize_song(key: str, sample_rate: int, seconds: float) -> np.ndarray:
  """Audio of the synthetic song ``key``: float32 mono in [-1, 1], ``round(seconds * sample_rate)`` samples."""
  genre = _parse_key(key)
  return synthesize_style(genre, _rng_for_key(key), sample_rate, seconds)


def synthesize_style(genre: str, rng: np.random.Generator, sample_rate: int,
                     seconds: float) -> np.ndarray:
  """One random song of style ``genre`` drawn with ``rng`` (float32 mono, peak in [0.3, 0.9])."""
  if genre not in _STYLES:
    raise ValueError(f'Unknown synthetic genre {genre!r}; allowed: {", ".join(GENRES)}.')
  if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate < 1000:
    raise ValueError(f'sample_rate must be an integer >= 1000 Hz, got {sample_rate!r}.')
  if not (isinstance(seconds, (int, float, np.floating, np.integer)) and math.isfinite(seconds)
          and seconds > 0):
    raise ValueError(f'seconds must be a positive finite number, got {seconds!r}.')
  sample_rate = int(sample_rate)
  num_samples = int(round(float(seconds) * sample_rate))
  if num_samples < 1:
    raise ValueError(f'seconds={seconds!r} at {sample_rate} Hz gives no samples; ask for at least one.')
  ctx = _Ctx(rng=rng, sr=sample_rate, num_samples=num_samples, bright=float(rng.uniform(0.6, 1.6)))
  phrase = _STYLES[genre](ctx)
  return _mixdown(ctx, phrase)


# ----------------------------------------------------------------------------
# Rendering context, timing grid and phrase.


@dataclasses.dataclass
class _Ctx:
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
class _Score:
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


def _score(ctx: _Ctx, bpm: float, steps: int, bars: int, swing: float = 0.0,
           beats: int = 4) -> _Score:
  """Grid for a phrase of ``bars`` bars, capped to what the song needs (fewer bars render faster)."""
  bar_len = max(64, int(round(beats * 60.0 / bpm * ctx.sr)))
  needed = -(-ctx.num_samples // bar_len)
  return _Score(sr=ctx.sr, bar_len=bar_len, steps=steps, swing=swing, num_bars=max(1, min(bars, needed)))


@dataclasses.dataclass
class _Arrangement:
  """How a style tends to vary over the song (probabilities of sections)."""
  intro_prob: float = 0.4
  intro_keeps: tuple[str, ...] = ('chords', 'texture')  # layers that play in the intro
  break_prob: float = 0.4
  break_keeps: tuple[str, ...] = ('drums', 'bass', 'texture')
  lead_prob: float = 0.6  # chance a lead plays in a given phrase repeat


@dataclasses.dataclass
class _Phrase:
  score: _Score
  layers: dict[str, np.ndarray]
  levels: dict[str, float]
  arrangement: _Arrangement
  snr_db: float  # background noise level under the music


def _new_phrase(ctx: _Ctx, score: _Score, levels: dict[str, float], arrangement: _Arrangement,
                snr_db: tuple[float, float] = (28.0, 55.0)) -> _Phrase:
  layers = {name: np.zeros(score.length, np.float32) for name in _LAYERS}
  return _Phrase(score=score, layers=layers, levels=levels, arrangement=arrangement,
                 snr_db=float(ctx.rng.uniform(*snr_db)))


# ----------------------------------------------------------------------------
# Low-level DSP: only SIMD-friendly numpy (no cumsum, no float64 trig, no bulk
# RNG draws: those run ~50x slower per sample); Python loops only over notes.


def _midi_hz(midi: float) -> float:
  return 440.0 * 2.0 ** ((midi - 69.0) / 12.0)


def _add(buf: np.ndarray, start: int, clip: np.ndarray, gain: float = 1.0) -> None:
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


def _decay(ctx: _Ctx, n: int, tau: float) -> np.ndarray:
  return np.exp(ctx.time(n) * np.float32(-1.0 / max(tau, 1e-4)))


def _declick(ctx: _Ctx, env: np.ndarray, attack: float = 0.002, release: float = 0.004) -> np.ndarray:
  """Short linear fades at both ends so cut notes do not click."""
  n = env.shape[0]
  a = min(n // 2, max(1, int(attack * ctx.sr)))
  r = min(n // 2, max(1, int(release * ctx.sr)))
  ramp = ctx.time(max(a, r)) * np.float32(ctx.sr)
  env[:a] *= ramp[:a] * np.float32(1.0 / a)
  env[n - r:] *= ramp[r - 1::-1] * np.float32(1.0 / r)
  return env


def _noise(ctx: _Ctx, n: int) -> np.ndarray:
  """White noise in [-1, 1) from an integer hash (lowbias32) of the sample index: fast and seeded."""
  seed = np.uint32(ctx.rng.integers(0, 2**32))
  h = ctx.index(n) * np.uint32(0x9E3779B1) + seed
  h ^= h >> np.uint32(16)
  h *= np.uint32(0x7FEB352D)
  h ^= h >> np.uint32(15)
  h *= np.uint32(0x846CA68B)
  h ^= h >> np.uint32(16)
  return (h >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -23) - np.float32(1.0)


def _smooth(x: np.ndarray, octaves: int) -> np.ndarray:
  """Circular moving average over 2**octaves samples (a cheap low-pass), by repeated doubling."""
  y = x
  for k in range(octaves):
    y = y + np.roll(y, 1 << k)
  return y * np.float32(0.5 ** octaves) if octaves else y


def _highpass(x: np.ndarray) -> np.ndarray:
  """Second difference: +12 dB/octave, leaves only the hiss (hats, cymbals)."""
  y = np.zeros_like(x)
  y[2:] = x[2:] - 2 * x[1:-1] + x[:-2]
  return y * np.float32(0.25)


def _room(ctx: _Ctx, x: np.ndarray, wet: float, size_s: float, stages: int = 3) -> np.ndarray:
  """Reverb-ish smoothing: a low-passed send through a cascade of circular echoes (2**stages taps)."""
  if wet <= 0.0 or x.shape[0] < 64:
    return x
  rng = ctx.rng
  send = _smooth(x, int(rng.integers(1, 4)))
  echoes = np.roll(send, int(ctx.sr * rng.uniform(0.01, 0.03)))
  for k in range(stages):
    delay = int(ctx.sr * size_s * rng.uniform(0.5, 1.0) / (1 << k))
    src = echoes.copy()
    _shift_add(echoes, src, delay, rng.uniform(0.4, 0.7))
  return x + echoes * np.float32(wet / (1.55 ** stages))


def _distort(x: np.ndarray, drive: float) -> np.ndarray:
  """Soft clipping (tanh) after normalising, so ``drive`` means the same at any level."""
  peak = float(max(x.max(), -x.min()))
  if peak <= 0:
    return x
  return np.tanh(x * np.float32(drive / peak)) * np.float32(peak)


def _presence(x: np.ndarray, amount: float) -> np.ndarray:
  """Treble lift (x plus its first difference): the bite of a guitar cabinet."""
  y = x * np.float32(1.0 + amount)
  y[1:] -= x[:-1] * np.float32(amount)
  return y


def _wavetable(ratios: Sequence[int], amps: np.ndarray, f0: float, sr: int, cutoff_hz: float,
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


def _phase_index(ctx: _Ctx, hz: float, n: int) -> np.ndarray:
  """Table indices of a tone at ``hz``: a 32-bit phase accumulator that wraps exactly (no drift)."""
  inc = np.uint32(int(round(hz / ctx.sr * 2.0**32)) % 2**32)
  return (ctx.index(n) * inc) >> np.uint32(32 - _TABLE_BITS)


def _osc(ctx: _Ctx, table: np.ndarray, hz: float, n: int) -> np.ndarray:
  """Steady tone: one ~0.5 s loop of a whole number of periods, tiled (a memcpy, not a gather).

  The loop's pitch is off by under 0.1 cent (half a sample over the loop), and
  it joins seamlessly because the phase wraps exactly after the loop.
  """
  cycles = max(1, round(hz * 0.5))
  loop = int(round(cycles * ctx.sr / hz))
  if n <= 2 * loop:
    return np.take(table, _phase_index(ctx, hz, n))
  return np.resize(np.take(table, _phase_index(ctx, cycles * ctx.sr / loop, loop)), n)


def _wobble(ctx: _Ctx, n: int, rate: float, delay: float) -> np.ndarray:
  """Vibrato phase deviation in cycles per Hz of depth: the integral of a sine that fades in after ``delay``."""
  t = ctx.time(n)
  onset = np.clip((t - np.float32(delay)) * np.float32(1 / 0.3), 0.0, 1.0)
  return onset * (np.float32(1.0) - np.cos(t * np.float32(2 * np.pi * rate))) * np.float32(1 / (2 * np.pi * rate))


def _osc_vibrato(ctx: _Ctx, table: np.ndarray, hz: float, n: int, wobble: np.ndarray, cents: float) -> np.ndarray:
  """Oscillator whose pitch wobbles by ``cents`` along ``wobble`` (bowed strings, voices, bends)."""
  depth = hz * (2.0 ** (cents / 1200.0) - 1.0)
  offset = (wobble[:n] * np.float32(depth * _TABLE)).astype(np.int32)
  offset += _phase_index(ctx, hz, n).view(np.int32)
  offset &= np.int32(_TABLE - 1)
  return np.take(table, offset)


# ----------------------------------------------------------------------------
# Instruments.


def _harmonics(count: int, slope: float, odd_only: bool = False, formant: float = 0.0,
               formant_at: int = 4) -> np.ndarray:
  """Harmonic amplitude profile: 1/h**slope, optionally odd harmonics only or a formant bump."""
  h = np.arange(1, count + 1, dtype=np.float64)
  amps = h ** -slope
  if odd_only:
    amps[1::2] *= 0.08
  if formant:
    amps *= 1.0 + formant * np.exp(-0.5 * ((h - formant_at) / 1.5) ** 2)
  return amps


@dataclasses.dataclass
class _Voice:
  """An instrument: harmonic profile + envelope; plays notes and chords into a phrase layer.

  Plucked voices (``sustained=False``) mix a bright copy that decays fast with
  a dull copy that decays slowly: high partials die first, as on a string.
  Sustained voices have an attack/release envelope and optional vibrato.
  Rendered notes are cached (a sampler): repeats of a note cost one add.
  """
  ctx: _Ctx
  amps: np.ndarray
  cutoff_hz: float
  sustained: bool = False
  attack: float = 0.003
  decay: float = 0.4  # plucked: bright part's time constant; sustained: release time
  dull_decay: float = 1.0  # plucked: dull part's time constant
  dull_mix: float = 0.6
  vibrato_cents: float = 0.0
  vibrato_hz: float = 5.5
  tables: dict = dataclasses.field(default_factory=dict)
  notes: dict = dataclasses.field(default_factory=dict)
  wobble: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.float32))

  def _table(self, chord: str, root_hz: float, dull: bool) -> tuple[np.ndarray, float]:
    """Wavetable of ``chord`` (and its fundamental) for roots within a half-octave band.

    Tables are shared across the band (the filter tracks the key a little, as
    on a synth); partials are cut against the band's top so none alias.
    """
    ratios = _CHORDS[chord]
    band = math.floor(2.0 * math.log2(root_hz / 27.5))
    key = (chord, band, dull)
    if key not in self.tables:
      top = 27.5 * 2.0 ** ((band + 1) / 2.0) / ratios[0]
      cutoff = self.cutoff_hz * self.ctx.bright * (0.3 if dull else 1.0)
      self.tables[key] = _wavetable(ratios, self.amps, top, self.ctx.sr, cutoff, self.ctx.rng)
    return self.tables[key], root_hz / ratios[0]

  def _render(self, n: int, midi: float, chord: str) -> np.ndarray:
    ctx = self.ctx
    table, f0 = self._table(chord, _midi_hz(midi), dull=False)
    if self.vibrato_cents > 0:
      if self.wobble.shape[0] < n:  # shared by every note of this voice
        self.wobble = _wobble(ctx, max(n, 2 * self.wobble.shape[0]), self.vibrato_hz, delay=0.15)
      tone = _osc_vibrato(ctx, table, f0, n, self.wobble, self.vibrato_cents)
    else:
      tone = _osc(ctx, table, f0, n)
    if self.sustained:  # attack/release ramps applied in place: no full-length envelope pass
      return _declick(ctx, tone, self.attack, min(self.decay, 0.5 * n / ctx.sr))
    out = tone * _declick(ctx, _decay(ctx, n, self.decay), self.attack)
    if self.dull_mix > 0:
      dull_table, _ = self._table(chord, _midi_hz(midi), dull=True)
      dull_env = _decay(ctx, n, self.dull_decay) * np.float32(self.dull_mix)
      out += _osc(ctx, dull_table, f0, n) * _declick(ctx, dull_env, self.attack)
    return out

  def play(self, buf: np.ndarray, start: int, n: int, midi: float, chord: str = 'note',
           vel: float = 1.0) -> None:
    """Adds one note (or chord on root ``midi``) of ``n`` samples at ``start``."""
    n = int(min(max(n, 16), buf.shape[0]))
    key = (n, float(midi), chord)
    if key not in self.notes:
      self.notes[key] = self._render(n, midi, chord)
    _add(buf, start, self.notes[key], vel)


def _bell(ctx: _Ctx, buf: np.ndarray, start: int, midi: float, seconds: float, vel: float) -> None:
  """Inharmonic bell / glass tone (ambient): a few sine partials, the higher ones dying faster."""
  n = min(int(seconds * ctx.sr), buf.shape[0])
  t = ctx.time(n)
  hz = _midi_hz(midi)
  out = np.zeros(n, np.float32)
  for ratio, amp, tau in ((1.0, 1.0, 1.0), (2.76, 0.5, 0.5), (5.40, 0.25, 0.25), (8.93, 0.12, 0.12)):
    if hz * ratio < 0.45 * ctx.sr:
      out += np.float32(amp) * np.sin(np.float32(2 * np.pi * hz * ratio) * t) * _decay(ctx, n, tau * seconds / 2)
  _add(buf, start, _declick(ctx, out), vel)


# ----------------------------------------------------------------------------
# Drums: one-shots drawn per song, normalised to peak 1.


def _normalise(clip: np.ndarray) -> np.ndarray:
  return (clip * np.float32(1.0 / max(1e-6, float(np.abs(clip).max())))).astype(np.float32)


def _clip_len(ctx: _Ctx, seconds: float) -> int:
  return max(16, min(int(seconds * ctx.sr), ctx.num_samples + ctx.sr))


def _kick(ctx: _Ctx, decay: tuple[float, float] = (0.12, 0.28), low: tuple[float, float] = (45, 62),
          click: tuple[float, float] = (0.05, 0.4)) -> np.ndarray:
  """Sine whose pitch falls exponentially from ~150 Hz to ``low``, plus a beater click."""
  rng = ctx.rng
  tau = rng.uniform(*decay)
  n = _clip_len(ctx, min(5 * tau, 1.2))
  t = ctx.time(n)
  f_hi, f_lo, p_tau = rng.uniform(110, 180), rng.uniform(*low), rng.uniform(0.015, 0.05)
  sweep = np.float32(1.0) - np.exp(t * np.float32(-1.0 / p_tau))
  phase = t * np.float32(2 * np.pi * f_lo) + sweep * np.float32(2 * np.pi * (f_hi - f_lo) * p_tau)
  kick = np.sin(phase) * _decay(ctx, n, tau)
  kick += np.float32(rng.uniform(*click)) * _highpass(_noise(ctx, n)) * _decay(ctx, n, 0.004)
  return _normalise(kick)


def _snare(ctx: _Ctx, decay: tuple[float, float] = (0.07, 0.16), tone: tuple[float, float] = (160, 250)) -> np.ndarray:
  """High-passed noise burst (the wires) over a short body tone."""
  rng = ctx.rng
  tau = rng.uniform(*decay)
  n = _clip_len(ctx, 5 * tau)
  body = np.sin(ctx.time(n) * np.float32(2 * np.pi * rng.uniform(*tone))) * _decay(ctx, n, 0.045)
  noise = _noise(ctx, n)
  wires = (_highpass(noise) * np.float32(2.0) + np.float32(0.4) * noise) * _decay(ctx, n, tau)
  return _normalise(np.float32(rng.uniform(0.3, 0.8)) * body + wires)


def _clang(ctx: _Ctx, n: int, freqs: np.ndarray) -> np.ndarray:
  """Inharmonic square partials, high-passed: the metallic part of hats and cymbals."""
  t = ctx.time(n)
  out = np.zeros(n, np.float32)
  for f in freqs:
    if f < 0.45 * ctx.sr:
      out += np.sign(np.sin(t * np.float32(2 * np.pi * f)))
  return _highpass(out) * np.float32(0.3)


def _cymbal(ctx: _Ctx, seconds: float, decay: tuple[float, float], clang: tuple[float, float] = (250, 600),
            ping: float = 0.0) -> np.ndarray:
  """Hi-hat (short), open hat, crash (long) or ride (``ping``: a stick tone on top).

  The sustained part is a 0.2 s texture tiled under the decay: a log-mel frame
  cannot tell it from fresh noise, and long cymbals cost 10x less.
  """
  rng = ctx.rng
  n = _clip_len(ctx, seconds)
  m = min(n, _clip_len(ctx, 0.2))
  out = _highpass(_noise(ctx, m)) * np.float32(1.5) + np.float32(0.5) * _clang(ctx, m, rng.uniform(*clang, 6))
  if ping:
    t = ctx.time(m)
    for f in rng.uniform(2500, 7000, 4):
      if f < 0.45 * ctx.sr:
        out += np.float32(ping) * np.sin(t * np.float32(2 * np.pi * f))
  return _normalise(np.resize(out, n) * _decay(ctx, n, rng.uniform(*decay)))


def _hat(ctx: _Ctx, decay: tuple[float, float] = (0.015, 0.045)) -> np.ndarray:
  return _cymbal(ctx, 6 * decay[1], decay)


def _open_hat(ctx: _Ctx) -> np.ndarray:
  return _cymbal(ctx, 0.9, (0.15, 0.3))


def _crash(ctx: _Ctx) -> np.ndarray:
  return _cymbal(ctx, 2.5, (0.6, 1.2), clang=(400, 1000))


def _ride(ctx: _Ctx) -> np.ndarray:
  return _cymbal(ctx, 1.5, (0.3, 0.6), clang=(300, 800), ping=0.5)


def _rim(ctx: _Ctx) -> np.ndarray:
  n = _clip_len(ctx, 0.08)
  tone = np.sin(ctx.time(n) * np.float32(2 * np.pi * ctx.rng.uniform(380, 700)))
  return _normalise((tone + np.float32(0.5) * _highpass(_noise(ctx, n))) * _decay(ctx, n, 0.012))


def _clap(ctx: _Ctx) -> np.ndarray:
  """A few hands a few ms apart: noise with three quick bursts and a tail."""
  n = _clip_len(ctx, 0.25)
  burst = np.zeros(n, np.float32)
  for offset in (0.0, 0.011, 0.022):
    i = min(n - 1, int(offset * ctx.sr))
    burst[i:] += _decay(ctx, n - i, 0.008 if offset < 0.02 else 0.07)
  return _normalise(_highpass(_noise(ctx, n)) * burst)


_VELOCITY = {'X': 1.15, 'x': 1.0, 'o': 0.55, 'g': 0.25}


def _hits(ctx: _Ctx, score: _Score, buf: np.ndarray, clip: np.ndarray, patterns: Sequence[str],
          level: float = 1.0, jitter_ms: float = 3.0) -> None:
  """Plays ``clip`` on the grid: one pattern string per bar, cycled ('x' hit, 'o' soft, 'g' ghost)."""
  bar_patterns = [patterns[bar % len(patterns)] for bar in range(score.num_bars)]
  for pattern in dict.fromkeys(bar_patterns):  # each distinct bar is rendered once (as a drum machine)
    starts = [score.at(0, step * score.steps / len(pattern)) for step, c in enumerate(pattern) if c in _VELOCITY]
    if not starts:
      continue
    vel = np.asarray([_VELOCITY[c] for c in pattern if c in _VELOCITY]) * level
    vel *= ctx.rng.uniform(0.85, 1.0, len(starts))
    shift = np.round(ctx.rng.uniform(-jitter_ms, jitter_ms, len(starts)) * 1e-3 * ctx.sr).astype(np.int64)
    one_bar = np.zeros(score.bar_len, np.float32)  # tails wrap into the bar's start, as when it repeats
    for start, v in zip((np.asarray(starts) + shift).tolist(), vel.tolist()):
      _add(one_bar, start, clip, v)
    for bar, bar_pattern in enumerate(bar_patterns):
      if bar_pattern == pattern:
        buf[bar * score.bar_len:(bar + 1) * score.bar_len] += one_bar


def _with_fill(score: _Score, main: str, fill: str) -> list[str]:
  """Main pattern on every bar but the phrase's last, which gets the fill."""
  return [main] * (score.num_bars - 1) + [fill] if score.num_bars > 1 else [main]


def _progression(ctx: _Ctx, options: Sequence[Sequence[tuple[int, str]]]) -> list[tuple[int, str]]:
  return list(_pick(ctx, options))


def _pick(ctx: _Ctx, options: Sequence):
  return options[int(ctx.rng.integers(len(options)))]


def _levels(ctx: _Ctx, **ranges: tuple[float, float]) -> dict[str, float]:
  levels = {name: 0.0 for name in _LAYERS}
  for name, (lo, hi) in ranges.items():
    levels[name] = float(ctx.rng.uniform(lo, hi))
  return levels


def _chord_at(prog: Sequence[tuple[int, str]], bar: int) -> tuple[int, str]:
  return prog[bar % len(prog)]


def _fold(midi: float, lo: float, hi: float) -> float:
  """Octave-fold a pitch into [lo, hi)."""
  while midi < lo:
    midi += 12
  while midi >= hi:
    midi -= 12
  return midi


def _scale_note(root: int, scale: Sequence[int], degree: int) -> int:
  return root + 12 * (degree // len(scale)) + scale[degree % len(scale)]


def _melody(ctx: _Ctx, voice: _Voice, buf: np.ndarray, score: _Score, root: int, scale: Sequence[int],
            lengths: Sequence[float], rest_prob: float, vel: float, leap: int = 2,
            span: tuple[int, int] = (0, 10), motif_bars: int = 2) -> None:
  """A motif of ``motif_bars`` bars (random walk over scale degrees, rhythm from ``lengths`` in grid
  steps), repeated over the phrase as real tunes repeat; repeats reuse the cached notes."""
  degree = int(ctx.rng.integers(span[0], span[1]))
  notes = []
  for bar in range(min(motif_bars, score.num_bars)):
    step = 0.0
    while step < score.steps:
      length = float(min(_pick(ctx, lengths), score.steps - step))
      if ctx.rng.random() >= rest_prob:
        notes.append((bar, step, length, _scale_note(root, scale, degree), vel * ctx.rng.uniform(0.7, 1.0)))
      degree = int(np.clip(degree + ctx.rng.integers(-leap, leap + 1), span[0], span[1]))
      step += length
  for first in range(0, score.num_bars, motif_bars):
    for bar, step, length, midi, v in notes:
      if first + bar < score.num_bars:
        voice.play(buf, score.at(first + bar, step), score.dur(length * 0.95), midi, vel=v)


# ----------------------------------------------------------------------------
# Styles. Each renders one phrase; tempos, grids and patterns are what set them apart.


def _rock(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(100, 140), steps=16, bars=4)
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.6, 1.0), bass=(0.4, 0.8), chords=(0.5, 0.9),
                                      lead=(0.3, 0.6)), _Arrangement(intro_prob=0.35, break_prob=0.35))
  d = p.layers['drums']
  kick = _pick(ctx, ('x.......x.x.....', 'x.....x.x.......', 'x.......x.......', 'x..x....x.x.....'))
  _hits(ctx, score, d, _kick(ctx, decay=(0.12, 0.25)), [kick])
  _hits(ctx, score, d, _snare(ctx), _with_fill(score, '....x.......x...', '....x.......xoxx'))
  cym = _hat(ctx) if rng.random() < 0.7 else _ride(ctx)
  _hits(ctx, score, d, cym, [_pick(ctx, ('x.o.x.o.x.o.x.o.', 'x.x.x.x.x.x.x.x.'))], level=0.5)
  _hits(ctx, score, d, _crash(ctx), ['x'] + ['.'] * 3, level=0.7)
  key = 40 + int(rng.integers(0, 8))  # E2..B2
  prog = _progression(ctx, ([(0, 'pow'), (7, 'pow'), (9, 'pow'), (5, 'pow')],
                            [(0, 'maj'), (5, 'maj'), (7, 'maj'), (5, 'maj')],
                            [(0, 'pow'), (5, 'pow'), (7, 'pow'), (7, 'pow')],
                            [(9, 'min'), (5, 'maj'), (0, 'maj'), (7, 'maj')]))
  guitar = _Voice(ctx, _harmonics(20, 1.0), cutoff_hz=rng.uniform(1800, 3500), decay=0.25, dull_decay=0.9)
  bass = _Voice(ctx, _harmonics(10, 1.5), cutoff_hz=900, decay=0.25, dull_decay=0.8)
  strum = _pick(ctx, ('x.x.x.x.x.x.x.x.', 'x.....x.x.....x.', 'x...............', 'x..x..x...x..x..'))
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step, char in enumerate(strum):
      if char == 'x':
        length = next((j for j in range(step + 1, 16) if strum[j] == 'x'), 16) - step
        guitar.play(p.layers['chords'], score.at(bar, step), score.dur(length), key + 12 + off, chord,
                    vel=rng.uniform(0.8, 1.0))
    for step in range(0, 16, 2):
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.8), key - 12 + off, vel=rng.uniform(0.8, 1.0))
  p.layers['chords'] = _distort(p.layers['chords'], rng.uniform(2.0, 8.0))
  lead = _Voice(ctx, _harmonics(16, 1.0), cutoff_hz=3000, sustained=True, attack=0.01, decay=0.05,
                vibrato_cents=rng.uniform(10, 40))
  _melody(ctx, lead, p.layers['lead'], score, key + 24, _PENT_MINOR if rng.random() < 0.5 else _PENT_MAJOR,
          lengths=(2, 2, 4, 6), rest_prob=0.3, vel=0.8)
  p.layers['lead'] = _distort(p.layers['lead'], rng.uniform(2.0, 6.0))
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.0, 0.35), rng.uniform(0.05, 0.3))
  return p


def _metal(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(140, 190), steps=16, bars=4)
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.4, 0.8), bass=(0.3, 0.6), chords=(0.7, 1.0),
                                      lead=(0.3, 0.6)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('chords', 'texture'), break_prob=0.3,
                               break_keeps=('drums', 'chords', 'bass', 'texture'), lead_prob=0.4))
  d = p.layers['drums']
  double = _pick(ctx, ('xxxxxxxxxxxxxxxx', 'x.xxx.xxx.xxx.xx', 'xx.xxx.xxx.xxx.x', 'x.x.x.x.x.x.x.x.'))
  _hits(ctx, score, d, _kick(ctx, decay=(0.05, 0.1), low=(50, 70), click=(0.5, 1.0)), [double], level=0.9,
        jitter_ms=1.5)
  snare = '..x...x...x...x.' if rng.random() < 0.3 else '....x.......x...'  # blast beat or backbeat
  _hits(ctx, score, d, _snare(ctx, decay=(0.06, 0.12)), _with_fill(score, snare, '....x.......xxxx'))
  _hits(ctx, score, d, _crash(ctx) if rng.random() < 0.5 else _ride(ctx),
        [_pick(ctx, ('x...x...x...x...', 'x.x.x.x.x.x.x.x.'))], level=0.45)
  key = 26 + int(rng.integers(0, 6))  # D1..G1 (down-tuned)
  prog = _progression(ctx, ([(0, 'pow'), (1, 'pow'), (0, 'pow'), (3, 'pow')],
                            [(0, 'pow'), (8, 'pow'), (10, 'pow'), (0, 'pow')],
                            [(0, 'pow'), (0, 'pow'), (6, 'pow'), (5, 'pow')]))
  chug = _Voice(ctx, _harmonics(32, 0.7), cutoff_hz=rng.uniform(3000, 6000), decay=rng.uniform(0.06, 0.12),
                dull_decay=0.15, dull_mix=0.5)
  ring = _Voice(ctx, _harmonics(32, 0.7), cutoff_hz=rng.uniform(3000, 6000), decay=0.8, dull_decay=1.5)
  bass = _Voice(ctx, _harmonics(10, 1.3), cutoff_hz=800, decay=0.1, dull_decay=0.25)
  riff = _pick(ctx, ('xxxxxxxxxxxxxxxx', 'x.xxx.xxx.xxx.xx', 'xx.xx.xx.xx.x.x.', 'x.x.xxx.x.x.xxx.'))
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    if bar % 2 == 1 and rng.random() < 0.4:  # a sustained accent bar
      ring.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 12 + off, chord)
      continue
    for step, char in enumerate(riff):
      if char == 'x':
        chug.play(p.layers['chords'], score.at(bar, step), score.dur(0.95), key + 12 + off, chord,
                  vel=rng.uniform(0.8, 1.0))
        bass.play(p.layers['bass'], score.at(bar, step), score.dur(0.95), key + off)
  p.layers['chords'] = _presence(_distort(p.layers['chords'], rng.uniform(12.0, 40.0)), rng.uniform(0.5, 2.0))
  lead = _Voice(ctx, _harmonics(16, 0.9), cutoff_hz=3500, sustained=True, attack=0.005, decay=0.03,
                vibrato_cents=rng.uniform(20, 50), vibrato_hz=rng.uniform(5, 7))
  _melody(ctx, lead, p.layers['lead'], score, key + 36, _MINOR, lengths=(1, 1, 2, 2, 4), rest_prob=0.15,
          vel=0.8, leap=2, span=(0, 14))
  p.layers['lead'] = _distort(p.layers['lead'], rng.uniform(5.0, 15.0))
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.2))
  return p


def _disco(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(115, 130), steps=16, bars=4)
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.6, 1.0), bass=(0.5, 0.9), chords=(0.4, 0.8),
                                      lead=(0.2, 0.5)),
                  _Arrangement(intro_prob=0.4, intro_keeps=('drums', 'texture'), break_prob=0.35,
                               break_keeps=('drums', 'bass', 'texture')))
  d = p.layers['drums']
  _hits(ctx, score, d, _kick(ctx, decay=(0.15, 0.3)), ['x...x...x...x...'])
  _hits(ctx, score, d, _clap(ctx) if rng.random() < 0.5 else _snare(ctx), ['....x.......x...'], level=0.8)
  _hits(ctx, score, d, _open_hat(ctx), ['..x...x...x...x.'], level=0.5)
  _hits(ctx, score, d, _hat(ctx), ['xoxoxoxoxoxoxoxo' if rng.random() < 0.6 else 'x.x.x.x.x.x.x.x.'],
        level=0.3)
  key = 33 + int(rng.integers(0, 12))
  prog = _progression(ctx, ([(0, 'min7'), (5, 'min7')], [(0, 'maj7'), (2, 'min7'), (9, 'min7'), (7, 'dom7')],
                            [(9, 'min7'), (2, 'min7'), (7, 'dom7'), (0, 'maj7')], [(0, 'min7'), (10, 'dom7')]))
  bass = _Voice(ctx, _harmonics(14, 1.0), cutoff_hz=rng.uniform(700, 1500), decay=0.12, dull_decay=0.3)
  strings = _Voice(ctx, _harmonics(24, 1.0), cutoff_hz=rng.uniform(2500, 5000), sustained=True,
                   attack=rng.uniform(0.05, 0.2), decay=0.2, vibrato_cents=8)
  stabs = rng.random() < 0.5
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step in range(0, 16, 2):
      octave = 12 if step % 4 == 2 else 0  # the disco octave bass
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.6), _fold(key + off, 33, 45) + octave)
    if stabs:
      for step in (2, 6, 10, 14):
        strings.play(p.layers['chords'], score.at(bar, step), score.dur(1.5), key + 24 + off, chord, 0.9)
    else:
      strings.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 24 + off, chord, 0.8)
  lead = _Voice(ctx, _harmonics(10, 1.3), cutoff_hz=4000, decay=0.08, dull_decay=0.2)  # muted rhythm guitar
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step in range(16):
      if rng.random() < 0.7:
        lead.play(p.layers['lead'], score.at(bar, step), score.dur(0.8), key + 36 + off, chord,
                  vel=0.5 + 0.5 * (step % 2))
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3))
  return p


def _funk(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(95, 115), steps=16, bars=2, swing=rng.uniform(0.0, 0.15))
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.6, 1.0), bass=(0.6, 1.0), chords=(0.4, 0.8),
                                      lead=(0.3, 0.6)),
                  _Arrangement(intro_prob=0.35, intro_keeps=('drums', 'texture'), break_prob=0.4,
                               break_keeps=('drums', 'bass', 'texture'), lead_prob=0.5))
  d = p.layers['drums']
  kick = _pick(ctx, ('x..x..x...x..x..', 'x.x...x..x.x....', 'x......x..x..x..'))
  _hits(ctx, score, d, _kick(ctx, decay=(0.1, 0.2)), [kick])
  snare = _pick(ctx, ('....x..g.g..x..g', '....x.g....gx.g.', '.g..x..g.g.gx...'))  # backbeat + ghosts
  _hits(ctx, score, d, _snare(ctx, decay=(0.05, 0.12)), [snare])
  _hits(ctx, score, d, _hat(ctx), ['xoxoxoxoxoxoxoxo'], level=0.45, jitter_ms=2)
  key = 33 + int(rng.integers(0, 12))
  prog = _progression(ctx, ([(0, 'dom9')], [(0, 'min7'), (5, 'dom9')], [(0, 'dom9'), (0, 'dom9'), (5, 'dom9'),
                                                                         (0, 'dom9')], [(0, 'min9')]))
  slap = _Voice(ctx, _harmonics(20, 0.9), cutoff_hz=rng.uniform(1500, 3000), decay=0.06, dull_decay=0.25,
                dull_mix=1.0)
  line = _pick(ctx, ('x..x.x..x.xx..x.', 'x.x..xx...x.x.xx', 'x...x.xx..x..xx.'))
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step, char in enumerate(line):
      if char == 'x':
        pop = 12 if rng.random() < 0.25 else (7 if rng.random() < 0.15 else 0)
        slap.play(p.layers['bass'], score.at(bar, step), score.dur(0.9), _fold(key + off, 31, 43) + pop,
                  vel=rng.uniform(0.7, 1.0))
  chank = _Voice(ctx, _harmonics(18, 0.8), cutoff_hz=rng.uniform(3000, 5000), decay=rng.uniform(0.02, 0.05),
                 dull_decay=0.06, dull_mix=0.3)
  scratch = _pick(ctx, ('..x.g.x...x.g.x.', 'g.x.g.xg.gx.g.x.', 'x.gx.gx.x.gx.g.x'))
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step, char in enumerate(scratch):
      if char in _VELOCITY:
        chank.play(p.layers['chords'], score.at(bar, step), score.dur(0.7), key + 24 + off, chord,
                   vel=_VELOCITY[char])
  horns = _Voice(ctx, _harmonics(18, 0.8, formant=1.5, formant_at=5), cutoff_hz=rng.uniform(2000, 4000),
                 sustained=True, attack=0.02, decay=0.05, vibrato_cents=10)
  hits = _pick(ctx, ('x..x......x.....', '......x.x..x....', 'x.......x.x.....'))
  for bar in range(0, score.num_bars, 2):
    off, chord = _chord_at(prog, bar)
    for step, char in enumerate(hits):
      if char == 'x':
        horns.play(p.layers['lead'], score.at(bar, step), score.dur(1.5), key + 36 + off, 'maj', 0.8)
  return p


def _hiphop(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(85, 100), steps=16, bars=2, swing=rng.uniform(0.1, 0.35))
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.7, 1.0), bass=(0.5, 1.0), chords=(0.3, 0.7),
                                      lead=(0.0, 0.3), texture=(1.0, 1.0)),
                  _Arrangement(intro_prob=0.45, intro_keeps=('chords', 'texture'), break_prob=0.3,
                               break_keeps=('drums', 'bass', 'texture'), lead_prob=0.3),
                  snr_db=(22, 40))
  d = p.layers['drums']
  kick = _pick(ctx, ('x......x.x......', 'x.....x...x.x...', 'x..x......x..x..', 'x.x.......x.....'))
  _hits(ctx, score, d, _kick(ctx, decay=(0.2, 0.45), low=(42, 55)), [kick], jitter_ms=5)
  _hits(ctx, score, d, _snare(ctx, decay=(0.1, 0.2)), ['....x.......x...'], jitter_ms=5)
  if rng.random() < 0.5:
    _hits(ctx, score, d, _clap(ctx), ['....x.......x...'], level=0.5)
  _hits(ctx, score, d, _hat(ctx), [_pick(ctx, ('x.x.x.x.x.x.x.x.', 'xoxoxoxoxoxoxoxo', 'x.xox.x.x.xox.x.'))],
        level=0.4, jitter_ms=6)
  key = 30 + int(rng.integers(0, 12))
  prog = _progression(ctx, ([(0, 'min7'), (5, 'min7')], [(0, 'min9'), (8, 'maj7')], [(0, 'min7'), (3, 'maj7')],
                            [(0, 'min7')]))
  # 808: a long sine-ish bass that follows the kick.
  sub = _Voice(ctx, _harmonics(3, 2.5), cutoff_hz=300, decay=rng.uniform(0.3, 0.7), dull_decay=1.0, dull_mix=0.0)
  keys = _Voice(ctx, np.array([1.0, 0.35, 0.12, 0.06, 0.03, 0.02]), cutoff_hz=rng.uniform(800, 2000),
                sustained=True, attack=0.01, decay=0.3)
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step, char in enumerate(kick):
      if char == 'x':
        sub.play(p.layers['bass'], score.at(bar, step), score.dur(3.5), _fold(key + off, 28, 40))
    keys.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 24 + off, chord, 0.8)
  # Electric-piano tremolo: a whole number of wobbles per bar, so one bar's gain curve tiles.
  chords = p.layers['chords']
  wobbles = max(1, round(rng.uniform(3, 6) * score.bar_len / ctx.sr))
  bar_t = ctx.time(score.bar_len)
  trem = 1.0 + np.float32(rng.uniform(0.0, 0.3)) * np.sin(bar_t * np.float32(2 * np.pi * wobbles * ctx.sr
                                                                              / score.bar_len))
  chords *= np.resize(trem, chords.shape[0])
  p.layers['chords'] = _room(ctx, chords, rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4))
  lead = _Voice(ctx, _harmonics(6, 2.0), cutoff_hz=2500, sustained=True, attack=0.02, decay=0.1)
  _melody(ctx, lead, p.layers['lead'], score, key + 36, _PENT_MINOR, lengths=(2, 4, 4), rest_prob=0.5, vel=0.6)
  # Vinyl: crackle clicks and a low rumble ride on the texture layer.
  tex = p.layers['texture']
  clicks = rng.integers(0, tex.shape[0], int(rng.uniform(8, 40) * tex.shape[0] / ctx.sr))
  tex[clicks] += rng.uniform(-1, 1, clicks.shape[0]).astype(np.float32) * np.float32(rng.uniform(0.05, 0.3))
  return p


def _jazz(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(110, 200), steps=12, bars=4)  # triplet grid: swing feel
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.3, 0.7), bass=(0.6, 1.0), chords=(0.4, 0.8),
                                      lead=(0.4, 0.8)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('bass', 'chords', 'texture'), break_prob=0.3,
                               break_keeps=('drums', 'bass', 'texture'), lead_prob=0.6))
  d = p.layers['drums']
  _hits(ctx, score, d, _ride(ctx), ['x..x.xx..x.x'], level=0.6, jitter_ms=4)
  _hits(ctx, score, d, _hat(ctx), ['...x.....x..'], level=0.4)
  _hits(ctx, score, d, _kick(ctx, decay=(0.1, 0.2)), ['g..g..g..g..'], level=0.8)
  comp = ''.join('g' if rng.random() < 0.12 else '.' for _ in range(12 * score.num_bars))
  _hits(ctx, score, d, _snare(ctx, decay=(0.1, 0.25)), [comp[i * 12:(i + 1) * 12] for i in range(score.num_bars)],
        level=0.7)
  key = 36 + int(rng.integers(0, 12))
  prog = _progression(ctx, ([(2, 'min7'), (7, 'dom7'), (0, 'maj7'), (0, 'maj7')],
                            [(2, 'min7'), (7, 'dom7'), (0, 'maj7'), (9, 'dom7')],
                            [(0, 'maj7'), (9, 'min7'), (2, 'min7'), (7, 'dom7')],
                            [(0, 'min7'), (5, 'dom7'), (10, 'maj7'), (3, 'maj7')]))
  upright = _Voice(ctx, _harmonics(10, 2.0), cutoff_hz=rng.uniform(500, 1000), decay=0.15, dull_decay=0.6,
                   dull_mix=1.2)
  for bar in range(score.num_bars):  # walking bass: chord tones, then a chromatic approach
    off, chord = _chord_at(prog, bar)
    nxt, _ = _chord_at(prog, bar + 1)
    third = 3 if chord.startswith('min') else 4
    root = _fold(key + off, 28, 40)
    target = _fold(key + nxt, 28, 40)
    notes = (root, root + _pick(ctx, (third, 7, 12)), root + _pick(ctx, (7, third, 5, 12)),
             target + _pick(ctx, (-1, 1, 2)))
    for beat, note in enumerate(notes):
      upright.play(p.layers['bass'], score.at(bar, beat * 3), score.dur(2.8), note, vel=rng.uniform(0.8, 1.0))
  piano = _Voice(ctx, _harmonics(16, 1.4), cutoff_hz=rng.uniform(2000, 4000), decay=rng.uniform(0.2, 0.5),
                 dull_decay=rng.uniform(0.6, 1.5))
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for _ in range(int(rng.integers(1, 4))):
      step = int(_pick(ctx, (0, 2, 3, 5, 6, 8, 9, 11)))
      piano.play(p.layers['chords'], score.at(bar, step), score.dur(rng.uniform(1.5, 5)), key + 12 + off, chord,
                 vel=rng.uniform(0.5, 0.9))
  horn = _Voice(ctx, _harmonics(16, 1.1, formant=2.0, formant_at=rng.integers(3, 6)),
                cutoff_hz=rng.uniform(1500, 3000), sustained=True, attack=0.03, decay=0.06,
                vibrato_cents=rng.uniform(10, 25), vibrato_hz=rng.uniform(4.5, 6))
  _melody(ctx, horn, p.layers['lead'], score, key + 12 + 12 * int(rng.integers(0, 2)), _DORIAN,
          lengths=(2, 1, 3, 3, 6), rest_prob=0.2, vel=0.8, span=(3, 14))
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3))
  return p


def _blues(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(70, 110), steps=12, bars=4)  # shuffle: a triplet grid
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.5, 0.9), bass=(0.5, 0.9), chords=(0.5, 0.9),
                                      lead=(0.4, 0.8)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('chords', 'lead', 'texture'), break_prob=0.25,
                               break_keeps=('drums', 'bass', 'lead', 'texture'), lead_prob=0.6))
  d = p.layers['drums']
  _hits(ctx, score, d, _kick(ctx, decay=(0.12, 0.25)), ['x.....x.....'])
  _hits(ctx, score, d, _snare(ctx, decay=(0.08, 0.2)), _with_fill(score, '...x.....x..', '...x.....xxx'))
  _hits(ctx, score, d, _hat(ctx) if rng.random() < 0.6 else _ride(ctx), ['x.xx.xx.xx.x'], level=0.5)
  key = 38 + int(rng.integers(0, 8))
  form = _pick(ctx, ([0, 5, 0, 7], [0, 0, 5, 7], [0, 5, 7, 5], [0, 0, 0, 5]))  # I7 / IV7 / V7 moves
  bass = _Voice(ctx, _harmonics(10, 1.6), cutoff_hz=rng.uniform(600, 1200), decay=0.2, dull_decay=0.5)
  guitar = _Voice(ctx, _harmonics(18, 1.1), cutoff_hz=rng.uniform(1800, 3200), decay=0.2, dull_decay=0.7)
  boogie = (0, 4, 7, 9, 10, 9, 7, 4)
  for bar in range(score.num_bars):
    off = form[bar % len(form)]
    for i, interval in enumerate(boogie):  # shuffled eighths: on the beat and on its last triplet
      step = (i // 2) * 3 + (2 if i % 2 else 0)
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.8 if i % 2 == 0 else 0.9),
                _fold(key + off, 28, 40) + interval)
    for beat in range(4):
      for step, length in ((beat * 3, 1.8), (beat * 3 + 2, 0.9)):
        guitar.play(p.layers['chords'], score.at(bar, step), score.dur(length), key + 12 + off,
                    'dom7', vel=1.0 if step % 3 == 0 else 0.6)
  p.layers['chords'] = _distort(p.layers['chords'], rng.uniform(1.2, 4.0))
  lead = _Voice(ctx, _harmonics(16, 1.1), cutoff_hz=rng.uniform(2000, 3500), sustained=True, attack=0.01,
                decay=0.08, vibrato_cents=rng.uniform(25, 60), vibrato_hz=rng.uniform(4, 6))
  _melody(ctx, lead, p.layers['lead'], score, key + 24, _PENT_MINOR, lengths=(2, 3, 3, 6), rest_prob=0.35,
          vel=0.8, span=(2, 9))
  p.layers['lead'] = _distort(p.layers['lead'], rng.uniform(1.5, 5.0))
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.05, 0.35), rng.uniform(0.05, 0.3))
  return p


def _reggae(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(60, 80), steps=16, bars=2, swing=rng.uniform(0.0, 0.25))
  p = _new_phrase(ctx, score, _levels(ctx, drums=(0.5, 0.9), bass=(0.5, 0.9), chords=(0.5, 0.9),
                                      lead=(0.2, 0.5)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('drums', 'chords', 'texture'), break_prob=0.45,
                               break_keeps=('drums', 'bass', 'texture'), lead_prob=0.7))
  d = p.layers['drums']
  steppers = rng.random() < 0.25
  _hits(ctx, score, d, _kick(ctx, decay=(0.15, 0.3)), ['x...x...x...x...' if steppers else '........x.......'])
  _hits(ctx, score, d, _rim(ctx), _with_fill(score, '........x.......', '........x...x.xx'), level=0.8)
  _hits(ctx, score, d, _hat(ctx), [_pick(ctx, ('x.x.x.x.x.x.x.x.', 'x.xxx.xxx.xxx.xx'))], level=0.4)
  key = 33 + int(rng.integers(0, 12))
  minor = rng.random() < 0.5
  prog = _progression(ctx, ([(0, 'min'), (5, 'min')], [(0, 'min'), (10, 'maj')]) if minor
                      else ([(0, 'maj'), (5, 'maj')], [(0, 'maj'), (7, 'maj')]))
  bass = _Voice(ctx, _harmonics(6, 2.0), cutoff_hz=rng.uniform(300, 600), decay=0.3, dull_decay=0.8, dull_mix=1.0)
  scale = _PENT_MINOR if minor else _PENT_MAJOR
  line = _pick(ctx, ([(0, 3, 0), (4, 2, 0), (6, 2, 2), (10, 2, 1), (12, 3, 3)],
                     [(0, 6, 0), (8, 2, 0), (10, 2, 2), (12, 2, 3), (14, 2, 2)],
                     [(2, 2, 0), (4, 4, 0), (10, 2, 4), (12, 4, 3)]))
  skank = _Voice(ctx, _harmonics(16, 0.9), cutoff_hz=rng.uniform(2500, 4500), decay=0.05, dull_decay=0.1,
                 dull_mix=0.4)
  organ = _Voice(ctx, np.array([1.0, 0.8, 0.5, 0.6, 0.0, 0.4, 0.0, 0.3]), cutoff_hz=3000, sustained=True,
                 attack=0.005, decay=0.02)
  skank_steps = (4, 12) if rng.random() < 0.5 else (2, 6, 10, 14)  # the off-beat chop
  for bar in range(score.num_bars):
    off, chord = _chord_at(prog, bar)
    for step, length, degree in line:
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(length * 0.9),
                _fold(key + off, 28, 40) + scale[degree % len(scale)])
    for step in skank_steps:
      skank.play(p.layers['chords'], score.at(bar, step), score.dur(1.2), key + 24 + off, chord, 0.9)
    for step in (3, 5, 11, 13):  # organ bubble
      organ.play(p.layers['lead'], score.at(bar, step), score.dur(0.8), key + 12 + off, chord, 0.6)
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))
  p.layers['drums'] = _room(ctx, p.layers['drums'], rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.4), stages=2)
  return p


def _classical(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(60, 120), steps=16, bars=4)
  p = _new_phrase(ctx, score, _levels(ctx, bass=(0.4, 0.8), chords=(0.4, 0.8), lead=(0.5, 0.9)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('chords', 'bass', 'texture'), break_prob=0.3,
                               break_keeps=('chords', 'lead', 'texture'), lead_prob=0.85),
                  snr_db=(35, 60))
  key = 36 + int(rng.integers(0, 12))
  minor = rng.random() < 0.4
  prog = _progression(ctx, ([(0, 'min'), (5, 'min'), (7, 'maj'), (0, 'min')],
                            [(0, 'min'), (8, 'maj'), (5, 'min'), (7, 'maj')]) if minor
                      else ([(0, 'maj'), (5, 'maj'), (7, 'maj'), (0, 'maj')],
                            [(0, 'maj'), (9, 'min'), (5, 'maj'), (7, 'maj')],
                            [(0, 'maj'), (2, 'min'), (7, 'dom7'), (0, 'maj')]))
  scale = _MINOR if minor else _MAJOR
  if rng.random() < 0.5:  # string ensemble
    bowed = dict(sustained=True, attack=rng.uniform(0.15, 0.4), decay=0.3, vibrato_hz=rng.uniform(4.5, 6.5))
    section = _Voice(ctx, _harmonics(24, 0.9, formant=0.8, formant_at=3), cutoff_hz=rng.uniform(2500, 5000),
                     vibrato_cents=rng.uniform(6, 15), **bowed)
    cello = _Voice(ctx, _harmonics(20, 1.0, formant=1.0, formant_at=2), cutoff_hz=2000,
                   vibrato_cents=rng.uniform(8, 15), **bowed)
    violin = _Voice(ctx, _harmonics(24, 0.8, formant=1.0, formant_at=4), cutoff_hz=rng.uniform(3000, 6000),
                    vibrato_cents=rng.uniform(15, 30), **bowed)
    for bar in range(score.num_bars):
      off, chord = _chord_at(prog, bar)
      section.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 12 + off, chord, 0.8)
      for half in (0, 8):
        cello.play(p.layers['bass'], score.at(bar, half), score.dur(8), _fold(key + off, 36, 48)
                   + (7 if half and rng.random() < 0.5 else 0))
    _melody(ctx, violin, p.layers['lead'], score, key + 24, scale, lengths=(4, 4, 8, 2, 2), rest_prob=0.05,
            vel=0.8, leap=2, span=(4, 16))
  else:  # piano: arpeggiated accompaniment under a melody
    piano = _Voice(ctx, _harmonics(20, 1.3), cutoff_hz=rng.uniform(2500, 5000), decay=rng.uniform(0.3, 0.7),
                   dull_decay=rng.uniform(1.0, 2.5), dull_mix=0.8)
    figure = _pick(ctx, ((0, 2, 1, 2), (0, 1, 2, 1), (0, 1, 2, 3)))
    for bar in range(score.num_bars):
      off, chord = _chord_at(prog, bar)
      tones = [0, 3 if chord == 'min' else 4, 7, 12]
      for i in range(8):
        piano.play(p.layers['chords'], score.at(bar, 2 * i), score.dur(4), key + 12 + off + tones[figure[i % 4]],
                   vel=rng.uniform(0.5, 0.7))
      piano.play(p.layers['bass'], score.at(bar, 0), score.dur(16), _fold(key + off, 36, 48), vel=0.8)
    _melody(ctx, piano, p.layers['lead'], score, key + 24, scale, lengths=(4, 4, 2, 2, 8), rest_prob=0.1,
            vel=0.9, leap=2, span=(4, 14))
  for name in ('chords', 'lead'):  # a hall; the bass stays drier
    p.layers[name] = _room(ctx, p.layers[name], rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.8))
  return p


def _ambient(ctx: _Ctx) -> _Phrase:
  rng = ctx.rng
  score = _score(ctx, rng.uniform(50, 80), steps=16, bars=4)
  p = _new_phrase(ctx, score, _levels(ctx, bass=(0.3, 0.7), chords=(0.5, 1.0), texture=(1.0, 1.0)),
                  _Arrangement(intro_prob=0.3, intro_keeps=('chords', 'texture'), break_prob=0.3,
                               break_keeps=('chords', 'lead', 'texture'), lead_prob=0.7),
                  snr_db=(25, 45))
  key = 36 + int(rng.integers(0, 12))
  prog = _progression(ctx, ([(0, 'sus2'), (5, 'maj7')], [(0, 'min9'), (8, 'maj7')], [(0, 'maj7'), (4, 'min7')],
                            [(0, 'sus2'), (10, 'sus2')], [(0, 'min9')]))
  pad = _Voice(ctx, _harmonics(16, rng.uniform(1.0, 2.0)), cutoff_hz=rng.uniform(500, 1800), sustained=True,
               attack=rng.uniform(1.0, 3.0), decay=rng.uniform(1.5, 3.0))
  drone = _Voice(ctx, _harmonics(4, 2.0), cutoff_hz=400, sustained=True, attack=2.0, decay=2.0)
  chord_bars = 2
  for bar in range(0, score.num_bars, chord_bars):
    off, chord = _chord_at(prog, bar // chord_bars)
    length = min(score.length, int(chord_bars * score.bar_len * rng.uniform(1.1, 1.4)))  # overlapping swells
    pad.play(p.layers['chords'], score.at(bar, 0), length, key + 12 + off, chord, 0.9)
  drone.play(p.layers['bass'], 0, score.length, _fold(key, 28, 40), 'pow', 1.0)
  scale = _PENT_MAJOR if rng.random() < 0.5 else _PENT_MINOR
  for bar in range(score.num_bars):
    if rng.random() < 0.6:
      _bell(ctx, p.layers['chords'], score.at(bar, int(rng.integers(0, 16))),
            _scale_note(key + 36, scale, int(rng.integers(0, 8))), rng.uniform(1.5, 4.0), rng.uniform(0.3, 0.8))
  # Wind: low-passed noise swelling slowly; a short buffer laid end to end with a gain per copy.
  tex = p.layers['texture']
  wind = _smooth(_noise(ctx, min(tex.shape[0], ctx.sr)), int(rng.integers(3, 7)))
  wind *= np.float32(rng.uniform(0.0, 0.05) / max(1e-6, float(np.abs(wind).max())))
  period, phase = rng.uniform(6, 15), rng.uniform(0, 2 * np.pi)
  for start in range(0, tex.shape[0], wind.shape[0]):
    swell = 0.5 + 0.5 * math.sin(2 * np.pi * start / ctx.sr / period + phase)
    _add(tex, start, wind[:tex.shape[0] - start], swell)
  p.layers['chords'] = _room(ctx, p.layers['chords'], rng.uniform(0.4, 0.7), rng.uniform(0.5, 1.5))
  return p


_STYLES: dict[str, Callable[[_Ctx], _Phrase]] = {
    'ambient': _ambient, 'blues': _blues, 'classical': _classical, 'disco': _disco, 'funk': _funk,
    'hiphop': _hiphop, 'jazz': _jazz, 'metal': _metal, 'reggae': _reggae, 'rock': _rock,
}
assert tuple(sorted(_STYLES)) == GENRES


# ----------------------------------------------------------------------------
# Arrangement and mixdown.


def _bar_gains(ctx: _Ctx, phrase: _Phrase, total_bars: int) -> dict[str, np.ndarray]:
  """Per-bar gain of every layer: level x (intro / breakdown / lead on-off sections)."""
  rng, arr, nbars = ctx.rng, phrase.arrangement, phrase.score.num_bars
  on = {name: np.ones(total_bars, bool) for name in _LAYERS}
  # Sections stay short next to the song (at most a quarter / a fifth of its bars), so even a
  # short song mostly plays in its style.
  intro = min(int(_pick(ctx, (1, 2, 4))), total_bars // 4)
  if rng.random() < arr.intro_prob and intro > 0:
    for name in _LAYERS:
      if name not in arr.intro_keeps:
        on[name][:intro] = False
  length = min(int(_pick(ctx, (2, 4))), total_bars // 5)
  if rng.random() < arr.break_prob and length > 0:
    start = int(rng.integers(max(1, intro), total_bars - length + 1))
    for name in _LAYERS:
      if name not in arr.break_keeps:
        on[name][start:start + length] = False
  repeats = -(-total_bars // nbars)
  lead_on = rng.random(repeats) < arr.lead_prob
  on['lead'] &= np.repeat(lead_on, nbars)[:total_bars]
  return {name: on[name] * np.float32(phrase.levels[name]) for name in _LAYERS}


def _mixdown(ctx: _Ctx, phrase: _Phrase) -> np.ndarray:
  """Lays the phrase out bar by bar with arrangement gains, adds the noise floor, normalises.

  Each distinct (gains, bar of the phrase) mix is computed once and copied
  wherever it recurs, so a 30 s song costs a few passes over its samples.
  """
  n, sr, rng = ctx.num_samples, ctx.sr, ctx.rng
  bar_len, nbars = phrase.score.bar_len, phrase.score.num_bars
  total_bars = -(-n // bar_len)
  gains = _bar_gains(ctx, phrase, total_bars)
  layers = [name for name in _LAYERS if phrase.levels[name] > 0]
  out = np.empty(n, np.float32)
  cache: dict[tuple, np.ndarray] = {}
  for bar in range(total_bars):
    src = (bar % nbars) * bar_len
    state = (bar % nbars,) + tuple(float(gains[name][bar]) for name in layers)
    if state not in cache:
      mix = np.zeros(bar_len, np.float32)
      for name, gain in zip(layers, state[1:]):
        if gain:
          mix += np.float32(gain) * phrase.layers[name][src:src + bar_len]
      cache[state] = mix
    start = bar * bar_len
    stop = min(n, start + bar_len)
    out[start:stop] = cache[state][:stop - start]
  rms = math.sqrt(float(np.dot(out, out)) / n)
  # Noise floor: a short pinkish noise buffer laid end to end under the music.
  floor = _noise(ctx, min(n, int(1.3 * sr)))
  floor = floor + np.float32(rng.uniform(0.0, 6.0)) * _smooth(floor, 3)
  floor_rms = math.sqrt(float(np.dot(floor, floor)) / floor.shape[0])
  floor *= np.float32(max(rms, 1e-4) * 10.0 ** (-phrase.snr_db / 20.0) / max(1e-9, floor_rms))
  for start in range(0, n, floor.shape[0]):
    stop = min(n, start + floor.shape[0])
    out[start:stop] += floor[:stop - start]
  peak = float(max(out.max(), -out.min()))
  out *= np.float32(rng.uniform(0.3, 0.9) / max(peak, 1e-9))
  return out
