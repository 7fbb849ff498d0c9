"""The song list, song keys, and rendering a song: its style's phrase, arranged and mixed down."""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable

import numpy as np

from melgenre_jax import errors
from melgenre_jax.data.songs import Song
from melgenre_jax.data.synthetic.dsp import LAYERS, Ctx, Phrase, white_noise, smooth
from melgenre_jax.data.synthetic.instruments import pick
from melgenre_jax.data.synthetic.styles_straight import (
    ambient_phrase, classical_phrase, disco_phrase, metal_phrase, rock_phrase)
from melgenre_jax.data.synthetic.styles_swung import (
    blues_phrase, funk_phrase, hiphop_phrase, jazz_phrase, reggae_phrase)

GENRES: tuple[str, ...] = (
    'ambient', 'blues', 'classical', 'disco', 'funk',
    'hiphop', 'jazz', 'metal', 'reggae', 'rock',
)

# Styles on a swung or triplet grid (styles_swung); the others play straight.
SWUNG: tuple[str, ...] = ('blues', 'funk', 'hiphop', 'jazz', 'reggae')
# Brightness factor above which a synthetic song is tagged 'bright' (draws are uniform in 0.6..1.6).
BRIGHT_ABOVE = 1.1

_KEY_RE = re.compile(r'^synthetic/([a-z]+)/(\d+)$')


# ----------------------------------------------------------------------------
# Song list and key handling.


def list_synthetic_songs(songs_per_genre: int, num_genres: int = 10,
                         genres: tuple[str, ...] | list[str] = (),
                         tagged: bool = False) -> list[Song]:
  """Songs of the built-in set: ``synthetic/<genre>/<index:04d>``.

  Styles: ``genres`` by name (in the canonical order), or the first
  ``num_genres`` when empty. ``tagged`` gives each song its tags for
  multi-label runs (``song_tags_for_key``); the audio is the same either way.
  """
  if isinstance(songs_per_genre, bool) or not isinstance(songs_per_genre, int) or songs_per_genre < 1:
    raise errors.ConfigError(
        f'config.data.synthetic.songs_per_genre must be an integer >= 1, got {songs_per_genre!r}.')
  chosen = _chosen_genres(num_genres, genres)
  return [
      Song(key=key, path='', genre=genre, group=None, split=None,
           tags=song_tags_for_key(key) if tagged else ())
      for genre in chosen
      for key in (f'synthetic/{genre}/{index:04d}' for index in range(songs_per_genre))
  ]


def _chosen_genres(num_genres: int, genres: tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """The styles of ``config.data.synthetic``: named ones (validated) or the first ``num_genres``."""
  if isinstance(genres, str):
    genres = (genres,)
  if genres:
    unknown = [g for g in genres if g not in GENRES]
    if unknown:
      raise errors.ConfigError(
          f'config.data.synthetic.genres: unknown style(s) {unknown}; allowed: {", ".join(GENRES)}.')
    if len(set(genres)) < 2:
      raise errors.ConfigError(
          f'config.data.synthetic.genres={tuple(genres)!r} must name at least 2 different '
          "styles, e.g. --config.data.synthetic.genres=\"('jazz','rock')\" (or leave it () "
          'and set num_genres).')
    return tuple(g for g in GENRES if g in set(genres))
  if isinstance(num_genres, bool) or not isinstance(num_genres, int) or not 2 <= num_genres <= len(GENRES):
    raise errors.ConfigError(
        f'config.data.synthetic.num_genres must be an integer in 2..{len(GENRES)}, got {num_genres!r}.')
  return GENRES[:num_genres]


def song_tags_for_key(key: str) -> tuple[str, ...]:
  """Tags of a synthetic song, from its key alone (nothing is rendered).

  Its genre; its rhythm family, ``swung`` or ``straight`` (the styles' grids);
  and ``bright`` when its brightness factor on every filter cutoff exceeds
  ``BRIGHT_ABOVE``: the very draw ``synthesize_song`` renders it with.
  """
  genre = _parse_key(key)
  tags = (genre, 'swung' if genre in SWUNG else 'straight')
  if _draw_brightness(_rng_for_key(key)) > BRIGHT_ABOVE:
    tags += ('bright',)
  return tags


def _draw_brightness(rng: np.random.Generator) -> float:
  """A song's brightness factor: the first draw of its generator (see synthesize_style)."""
  return float(rng.uniform(0.6, 1.6))


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
  # The first draw: song_tags_for_key reads the same one to tag a song 'bright'.
  ctx = Ctx(rng=rng, sr=sample_rate, num_samples=num_samples, bright=_draw_brightness(rng))
  phrase = _STYLES[genre](ctx)
  return _mixdown(ctx, phrase)


_STYLES: dict[str, Callable[[Ctx], Phrase]] = {
    'ambient': ambient_phrase, 'blues': blues_phrase, 'classical': classical_phrase,
    'disco': disco_phrase, 'funk': funk_phrase, 'hiphop': hiphop_phrase, 'jazz': jazz_phrase,
    'metal': metal_phrase, 'reggae': reggae_phrase, 'rock': rock_phrase,
}
assert tuple(sorted(_STYLES)) == GENRES


# ----------------------------------------------------------------------------
# Arrangement and mixdown.


def _bar_gains(ctx: Ctx, phrase: Phrase, total_bars: int) -> dict[str, np.ndarray]:
  """Per-bar gain of every layer: level x (intro / breakdown / lead on-off sections)."""
  rng, arr, nbars = ctx.rng, phrase.arrangement, phrase.score.num_bars
  on = {name: np.ones(total_bars, bool) for name in LAYERS}
  # Sections stay short next to the song (at most a quarter / a fifth of its bars), so even a
  # short song mostly plays in its style.
  intro = min(int(pick(ctx, (1, 2, 4))), total_bars // 4)
  if rng.random() < arr.intro_prob and intro > 0:
    for name in LAYERS:
      if name not in arr.intro_keeps:
        on[name][:intro] = False
  length = min(int(pick(ctx, (2, 4))), total_bars // 5)
  if rng.random() < arr.break_prob and length > 0:
    start = int(rng.integers(max(1, intro), total_bars - length + 1))
    for name in LAYERS:
      if name not in arr.break_keeps:
        on[name][start:start + length] = False
  repeats = -(-total_bars // nbars)
  lead_on = rng.random(repeats) < arr.lead_prob
  on['lead'] &= np.repeat(lead_on, nbars)[:total_bars]
  return {name: on[name] * np.float32(phrase.levels[name]) for name in LAYERS}


def _mixdown(ctx: Ctx, phrase: Phrase) -> np.ndarray:
  """Lays the phrase out bar by bar with arrangement gains, adds the noise floor, normalises.

  Each distinct (gains, bar of the phrase) mix is computed once and copied
  wherever it recurs, so a 30 s song costs a few passes over its samples.
  """
  n, sr, rng = ctx.num_samples, ctx.sr, ctx.rng
  bar_len, nbars = phrase.score.bar_len, phrase.score.num_bars
  total_bars = -(-n // bar_len)
  gains = _bar_gains(ctx, phrase, total_bars)
  layers = [name for name in LAYERS if phrase.levels[name] > 0]
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
  floor = white_noise(ctx, min(n, int(1.3 * sr)))
  floor = floor + np.float32(rng.uniform(0.0, 6.0)) * smooth(floor, 3)
  floor_rms = math.sqrt(float(np.dot(floor, floor)) / floor.shape[0])
  floor *= np.float32(max(rms, 1e-4) * 10.0 ** (-phrase.snr_db / 20.0) / max(1e-9, floor_rms))
  for start in range(0, n, floor.shape[0]):
    stop = min(n, start + floor.shape[0])
    out[start:stop] += floor[:stop - start]
  peak = float(max(out.max(), -out.min()))
  out *= np.float32(rng.uniform(0.3, 0.9) / max(peak, 1e-9))
  return out
