"""Instruments, drum one-shots, drum patterns and the composition helpers the styles share."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from melgenre_jax.data.synthetic.dsp import (
    LAYERS, Ctx, Score, add_looped, declick, decay_envelope, highpass, midi_hz, white_noise, osc, osc_vibrato,
    wavetable, vibrato_phase)

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
MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)
PENT_MINOR = (0, 3, 5, 7, 10)
PENT_MAJOR = (0, 2, 4, 7, 9)
DORIAN = (0, 2, 3, 5, 7, 9, 10)


# ----------------------------------------------------------------------------
# Instruments.


def harmonic_profile(count: int, slope: float, odd_only: bool = False, formant: float = 0.0,
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
class Voice:
  """An instrument: harmonic profile + envelope; plays notes and chords into a phrase layer.

  Plucked voices (``sustained=False``) mix a bright copy that decays fast with
  a dull copy that decays slowly: high partials die first, as on a string.
  Sustained voices have an attack/release envelope and optional vibrato.
  Rendered notes are cached (a sampler): repeats of a note cost one add.
  """
  ctx: Ctx
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
      self.tables[key] = wavetable(ratios, self.amps, top, self.ctx.sr, cutoff, self.ctx.rng)
    return self.tables[key], root_hz / ratios[0]

  def _render(self, n: int, midi: float, chord: str) -> np.ndarray:
    ctx = self.ctx
    table, f0 = self._table(chord, midi_hz(midi), dull=False)
    if self.vibrato_cents > 0:
      if self.wobble.shape[0] < n:  # shared by every note of this voice
        self.wobble = vibrato_phase(ctx, max(n, 2 * self.wobble.shape[0]), self.vibrato_hz, delay=0.15)
      tone = osc_vibrato(ctx, table, f0, n, self.wobble, self.vibrato_cents)
    else:
      tone = osc(ctx, table, f0, n)
    if self.sustained:  # attack/release ramps applied in place: no full-length envelope pass
      return declick(ctx, tone, self.attack, min(self.decay, 0.5 * n / ctx.sr))
    out = tone * declick(ctx, decay_envelope(ctx, n, self.decay), self.attack)
    if self.dull_mix > 0:
      dull_table, _ = self._table(chord, midi_hz(midi), dull=True)
      dull_env = decay_envelope(ctx, n, self.dull_decay) * np.float32(self.dull_mix)
      out += osc(ctx, dull_table, f0, n) * declick(ctx, dull_env, self.attack)
    return out

  def play(self, buf: np.ndarray, start: int, n: int, midi: float, chord: str = 'note',
           vel: float = 1.0) -> None:
    """Adds one note (or chord on root ``midi``) of ``n`` samples at ``start``."""
    n = int(min(max(n, 16), buf.shape[0]))
    key = (n, float(midi), chord)
    if key not in self.notes:
      self.notes[key] = self._render(n, midi, chord)
    add_looped(buf, start, self.notes[key], vel)


def bell(ctx: Ctx, buf: np.ndarray, start: int, midi: float, seconds: float, vel: float) -> None:
  """Inharmonic bell / glass tone (ambient): a few sine partials, the higher ones dying faster."""
  n = min(int(seconds * ctx.sr), buf.shape[0])
  t = ctx.time(n)
  hz = midi_hz(midi)
  out = np.zeros(n, np.float32)
  for ratio, amp, tau in ((1.0, 1.0, 1.0), (2.76, 0.5, 0.5), (5.40, 0.25, 0.25), (8.93, 0.12, 0.12)):
    if hz * ratio < 0.45 * ctx.sr:
      out += (np.float32(amp) * np.sin(np.float32(2 * np.pi * hz * ratio) * t)
              * decay_envelope(ctx, n, tau * seconds / 2))
  add_looped(buf, start, declick(ctx, out), vel)


# ----------------------------------------------------------------------------
# Drums: one-shots drawn per song, normalised to peak 1.


def _normalise(clip: np.ndarray) -> np.ndarray:
  return (clip * np.float32(1.0 / max(1e-6, float(np.abs(clip).max())))).astype(np.float32)


def _clip_len(ctx: Ctx, seconds: float) -> int:
  return max(16, min(int(seconds * ctx.sr), ctx.num_samples + ctx.sr))


def kick_drum(ctx: Ctx, decay: tuple[float, float] = (0.12, 0.28), low: tuple[float, float] = (45, 62),
              click: tuple[float, float] = (0.05, 0.4)) -> np.ndarray:
  """Sine whose pitch falls exponentially from ~150 Hz to ``low``, plus a beater click."""
  rng = ctx.rng
  tau = rng.uniform(*decay)
  n = _clip_len(ctx, min(5 * tau, 1.2))
  t = ctx.time(n)
  f_hi, f_lo, p_tau = rng.uniform(110, 180), rng.uniform(*low), rng.uniform(0.015, 0.05)
  sweep = np.float32(1.0) - np.exp(t * np.float32(-1.0 / p_tau))
  phase = t * np.float32(2 * np.pi * f_lo) + sweep * np.float32(2 * np.pi * (f_hi - f_lo) * p_tau)
  kick = np.sin(phase) * decay_envelope(ctx, n, tau)
  kick += np.float32(rng.uniform(*click)) * highpass(white_noise(ctx, n)) * decay_envelope(ctx, n, 0.004)
  return _normalise(kick)


def snare_drum(ctx: Ctx, decay: tuple[float, float] = (0.07, 0.16),
               tone: tuple[float, float] = (160, 250)) -> np.ndarray:
  """High-passed noise burst (the wires) over a short body tone."""
  rng = ctx.rng
  tau = rng.uniform(*decay)
  n = _clip_len(ctx, 5 * tau)
  body = np.sin(ctx.time(n) * np.float32(2 * np.pi * rng.uniform(*tone))) * decay_envelope(ctx, n, 0.045)
  noise = white_noise(ctx, n)
  wires = (highpass(noise) * np.float32(2.0) + np.float32(0.4) * noise) * decay_envelope(ctx, n, tau)
  return _normalise(np.float32(rng.uniform(0.3, 0.8)) * body + wires)


def _clang(ctx: Ctx, n: int, freqs: np.ndarray) -> np.ndarray:
  """Inharmonic square partials, high-passed: the metallic part of hats and cymbals."""
  t = ctx.time(n)
  out = np.zeros(n, np.float32)
  for f in freqs:
    if f < 0.45 * ctx.sr:
      out += np.sign(np.sin(t * np.float32(2 * np.pi * f)))
  return highpass(out) * np.float32(0.3)


def _cymbal(ctx: Ctx, seconds: float, decay: tuple[float, float], clang: tuple[float, float] = (250, 600),
            ping: float = 0.0) -> np.ndarray:
  """Hi-hat (short), open hat, crash (long) or ride (``ping``: a stick tone on top).

  The sustained part is a 0.2 s texture tiled under the decay: a log-mel frame
  cannot tell it from fresh noise, and long cymbals cost 10x less.
  """
  rng = ctx.rng
  n = _clip_len(ctx, seconds)
  m = min(n, _clip_len(ctx, 0.2))
  out = highpass(white_noise(ctx, m)) * np.float32(1.5) + np.float32(0.5) * _clang(ctx, m, rng.uniform(*clang, 6))
  if ping:
    t = ctx.time(m)
    for f in rng.uniform(2500, 7000, 4):
      if f < 0.45 * ctx.sr:
        out += np.float32(ping) * np.sin(t * np.float32(2 * np.pi * f))
  return _normalise(np.resize(out, n) * decay_envelope(ctx, n, rng.uniform(*decay)))


def hat(ctx: Ctx, decay: tuple[float, float] = (0.015, 0.045)) -> np.ndarray:
  return _cymbal(ctx, 6 * decay[1], decay)


def open_hat(ctx: Ctx) -> np.ndarray:
  return _cymbal(ctx, 0.9, (0.15, 0.3))


def crash(ctx: Ctx) -> np.ndarray:
  return _cymbal(ctx, 2.5, (0.6, 1.2), clang=(400, 1000))


def ride(ctx: Ctx) -> np.ndarray:
  return _cymbal(ctx, 1.5, (0.3, 0.6), clang=(300, 800), ping=0.5)


def rim(ctx: Ctx) -> np.ndarray:
  n = _clip_len(ctx, 0.08)
  tone = np.sin(ctx.time(n) * np.float32(2 * np.pi * ctx.rng.uniform(380, 700)))
  return _normalise((tone + np.float32(0.5) * highpass(white_noise(ctx, n))) * decay_envelope(ctx, n, 0.012))


def clap(ctx: Ctx) -> np.ndarray:
  """A few hands a few ms apart: noise with three quick bursts and a tail."""
  n = _clip_len(ctx, 0.25)
  burst = np.zeros(n, np.float32)
  for offset in (0.0, 0.011, 0.022):
    i = min(n - 1, int(offset * ctx.sr))
    burst[i:] += decay_envelope(ctx, n - i, 0.008 if offset < 0.02 else 0.07)
  return _normalise(highpass(white_noise(ctx, n)) * burst)


VELOCITY = {'X': 1.15, 'x': 1.0, 'o': 0.55, 'g': 0.25}


def play_hits(ctx: Ctx, score: Score, buf: np.ndarray, clip: np.ndarray, patterns: Sequence[str],
              level: float = 1.0, jitter_ms: float = 3.0) -> None:
  """Plays ``clip`` on the grid: one pattern string per bar, cycled ('x' hit, 'o' soft, 'g' ghost)."""
  bar_patterns = [patterns[bar % len(patterns)] for bar in range(score.num_bars)]
  for pattern in dict.fromkeys(bar_patterns):  # each distinct bar is rendered once (as a drum machine)
    starts = [score.at(0, step * score.steps / len(pattern)) for step, c in enumerate(pattern) if c in VELOCITY]
    if not starts:
      continue
    vel = np.asarray([VELOCITY[c] for c in pattern if c in VELOCITY]) * level
    vel *= ctx.rng.uniform(0.85, 1.0, len(starts))
    shift = np.round(ctx.rng.uniform(-jitter_ms, jitter_ms, len(starts)) * 1e-3 * ctx.sr).astype(np.int64)
    one_bar = np.zeros(score.bar_len, np.float32)  # tails wrap into the bar's start, as when it repeats
    for start, v in zip((np.asarray(starts) + shift).tolist(), vel.tolist()):
      add_looped(one_bar, start, clip, v)
    for bar, bar_pattern in enumerate(bar_patterns):
      if bar_pattern == pattern:
        buf[bar * score.bar_len:(bar + 1) * score.bar_len] += one_bar


def with_fill(score: Score, main: str, fill: str) -> list[str]:
  """Main pattern on every bar but the phrase's last, which gets the fill."""
  return [main] * (score.num_bars - 1) + [fill] if score.num_bars > 1 else [main]


# ----------------------------------------------------------------------------
# Composition: picks, levels, pitches and melodies.


def progression(ctx: Ctx, options: Sequence[Sequence[tuple[int, str]]]) -> list[tuple[int, str]]:
  return list(pick(ctx, options))


def pick(ctx: Ctx, options: Sequence):
  return options[int(ctx.rng.integers(len(options)))]


def layer_levels(ctx: Ctx, **ranges: tuple[float, float]) -> dict[str, float]:
  levels = {name: 0.0 for name in LAYERS}
  for name, (lo, hi) in ranges.items():
    levels[name] = float(ctx.rng.uniform(lo, hi))
  return levels


def chord_at(prog: Sequence[tuple[int, str]], bar: int) -> tuple[int, str]:
  return prog[bar % len(prog)]


def fold(midi: float, lo: float, hi: float) -> float:
  """Octave-fold a pitch into [lo, hi)."""
  while midi < lo:
    midi += 12
  while midi >= hi:
    midi -= 12
  return midi


def scale_note(root: int, scale: Sequence[int], degree: int) -> int:
  return root + 12 * (degree // len(scale)) + scale[degree % len(scale)]


def melody(ctx: Ctx, voice: Voice, buf: np.ndarray, score: Score, root: int, scale: Sequence[int],
           lengths: Sequence[float], rest_prob: float, vel: float, leap: int = 2,
           span: tuple[int, int] = (0, 10), motif_bars: int = 2) -> None:
  """A motif of ``motif_bars`` bars (random walk over scale degrees, rhythm from ``lengths`` in grid
  steps), repeated over the phrase as real tunes repeat; repeats reuse the cached notes."""
  degree = int(ctx.rng.integers(span[0], span[1]))
  notes = []
  for bar in range(min(motif_bars, score.num_bars)):
    step = 0.0
    while step < score.steps:
      length = float(min(pick(ctx, lengths), score.steps - step))
      if ctx.rng.random() >= rest_prob:
        notes.append((bar, step, length, scale_note(root, scale, degree), vel * ctx.rng.uniform(0.7, 1.0)))
      degree = int(np.clip(degree + ctx.rng.integers(-leap, leap + 1), span[0], span[1]))
      step += length
  for first in range(0, score.num_bars, motif_bars):
    for bar, step, length, midi, v in notes:
      if first + bar < score.num_bars:
        voice.play(buf, score.at(first + bar, step), score.dur(length * 0.95), midi, vel=v)
