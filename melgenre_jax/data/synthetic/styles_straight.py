"""Styles on a straight 16-step grid: rock, metal, disco, classical, ambient.

Each renders one phrase; tempos, grids and patterns are what set them apart.
"""

from __future__ import annotations

import math

import numpy as np

from melgenre_jax.data.synthetic.dsp import (
    Arrangement, Ctx, Phrase, add_looped, distort, new_phrase, white_noise, presence, room, make_score, smooth)
from melgenre_jax.data.synthetic.instruments import (
    MAJOR, MINOR, PENT_MAJOR, PENT_MINOR, Voice, bell, chord_at, clap, crash, fold, harmonic_profile, hat,
    play_hits, kick_drum, layer_levels, melody, open_hat, pick, progression, ride, scale_note, snare_drum, with_fill)


def rock_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(100, 140), steps=16, bars=4)
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.6, 1.0), bass=(0.4, 0.8), chords=(0.5, 0.9),
                                          lead=(0.3, 0.6)), Arrangement(intro_prob=0.35, break_prob=0.35))
  d = p.layers['drums']
  kick = pick(ctx, ('x.......x.x.....', 'x.....x.x.......', 'x.......x.......', 'x..x....x.x.....'))
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.12, 0.25)), [kick])
  play_hits(ctx, score, d, snare_drum(ctx), with_fill(score, '....x.......x...', '....x.......xoxx'))
  cym = hat(ctx) if rng.random() < 0.7 else ride(ctx)
  play_hits(ctx, score, d, cym, [pick(ctx, ('x.o.x.o.x.o.x.o.', 'x.x.x.x.x.x.x.x.'))], level=0.5)
  play_hits(ctx, score, d, crash(ctx), ['x'] + ['.'] * 3, level=0.7)
  key = 40 + int(rng.integers(0, 8))  # E2..B2
  prog = progression(ctx, ([(0, 'pow'), (7, 'pow'), (9, 'pow'), (5, 'pow')],
                           [(0, 'maj'), (5, 'maj'), (7, 'maj'), (5, 'maj')],
                           [(0, 'pow'), (5, 'pow'), (7, 'pow'), (7, 'pow')],
                           [(9, 'min'), (5, 'maj'), (0, 'maj'), (7, 'maj')]))
  guitar = Voice(ctx, harmonic_profile(20, 1.0), cutoff_hz=rng.uniform(1800, 3500), decay=0.25, dull_decay=0.9)
  bass = Voice(ctx, harmonic_profile(10, 1.5), cutoff_hz=900, decay=0.25, dull_decay=0.8)
  strum = pick(ctx, ('x.x.x.x.x.x.x.x.', 'x.....x.x.....x.', 'x...............', 'x..x..x...x..x..'))
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step, char in enumerate(strum):
      if char == 'x':
        length = next((j for j in range(step + 1, 16) if strum[j] == 'x'), 16) - step
        guitar.play(p.layers['chords'], score.at(bar, step), score.dur(length), key + 12 + off, chord,
                    vel=rng.uniform(0.8, 1.0))
    for step in range(0, 16, 2):
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.8), key - 12 + off, vel=rng.uniform(0.8, 1.0))
  p.layers['chords'] = distort(p.layers['chords'], rng.uniform(2.0, 8.0))
  lead = Voice(ctx, harmonic_profile(16, 1.0), cutoff_hz=3000, sustained=True, attack=0.01, decay=0.05,
               vibrato_cents=rng.uniform(10, 40))
  melody(ctx, lead, p.layers['lead'], score, key + 24, PENT_MINOR if rng.random() < 0.5 else PENT_MAJOR,
         lengths=(2, 2, 4, 6), rest_prob=0.3, vel=0.8)
  p.layers['lead'] = distort(p.layers['lead'], rng.uniform(2.0, 6.0))
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.0, 0.35), rng.uniform(0.05, 0.3))
  return p


def metal_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(140, 190), steps=16, bars=4)
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.4, 0.8), bass=(0.3, 0.6), chords=(0.7, 1.0),
                                          lead=(0.3, 0.6)),
                 Arrangement(intro_prob=0.3, intro_keeps=('chords', 'texture'), break_prob=0.3,
                             break_keeps=('drums', 'chords', 'bass', 'texture'), lead_prob=0.4))
  d = p.layers['drums']
  double = pick(ctx, ('xxxxxxxxxxxxxxxx', 'x.xxx.xxx.xxx.xx', 'xx.xxx.xxx.xxx.x', 'x.x.x.x.x.x.x.x.'))
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.05, 0.1), low=(50, 70), click=(0.5, 1.0)), [double], level=0.9,
            jitter_ms=1.5)
  snare = '..x...x...x...x.' if rng.random() < 0.3 else '....x.......x...'  # blast beat or backbeat
  play_hits(ctx, score, d, snare_drum(ctx, decay=(0.06, 0.12)), with_fill(score, snare, '....x.......xxxx'))
  play_hits(ctx, score, d, crash(ctx) if rng.random() < 0.5 else ride(ctx),
            [pick(ctx, ('x...x...x...x...', 'x.x.x.x.x.x.x.x.'))], level=0.45)
  key = 26 + int(rng.integers(0, 6))  # D1..G1 (down-tuned)
  prog = progression(ctx, ([(0, 'pow'), (1, 'pow'), (0, 'pow'), (3, 'pow')],
                           [(0, 'pow'), (8, 'pow'), (10, 'pow'), (0, 'pow')],
                           [(0, 'pow'), (0, 'pow'), (6, 'pow'), (5, 'pow')]))
  chug = Voice(ctx, harmonic_profile(32, 0.7), cutoff_hz=rng.uniform(3000, 6000), decay=rng.uniform(0.06, 0.12),
               dull_decay=0.15, dull_mix=0.5)
  ring = Voice(ctx, harmonic_profile(32, 0.7), cutoff_hz=rng.uniform(3000, 6000), decay=0.8, dull_decay=1.5)
  bass = Voice(ctx, harmonic_profile(10, 1.3), cutoff_hz=800, decay=0.1, dull_decay=0.25)
  riff = pick(ctx, ('xxxxxxxxxxxxxxxx', 'x.xxx.xxx.xxx.xx', 'xx.xx.xx.xx.x.x.', 'x.x.xxx.x.x.xxx.'))
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    if bar % 2 == 1 and rng.random() < 0.4:  # a sustained accent bar
      ring.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 12 + off, chord)
      continue
    for step, char in enumerate(riff):
      if char == 'x':
        chug.play(p.layers['chords'], score.at(bar, step), score.dur(0.95), key + 12 + off, chord,
                  vel=rng.uniform(0.8, 1.0))
        bass.play(p.layers['bass'], score.at(bar, step), score.dur(0.95), key + off)
  p.layers['chords'] = presence(distort(p.layers['chords'], rng.uniform(12.0, 40.0)), rng.uniform(0.5, 2.0))
  lead = Voice(ctx, harmonic_profile(16, 0.9), cutoff_hz=3500, sustained=True, attack=0.005, decay=0.03,
               vibrato_cents=rng.uniform(20, 50), vibrato_hz=rng.uniform(5, 7))
  melody(ctx, lead, p.layers['lead'], score, key + 36, MINOR, lengths=(1, 1, 2, 2, 4), rest_prob=0.15,
         vel=0.8, leap=2, span=(0, 14))
  p.layers['lead'] = distort(p.layers['lead'], rng.uniform(5.0, 15.0))
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.0, 0.2), rng.uniform(0.05, 0.2))
  return p


def disco_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(115, 130), steps=16, bars=4)
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.6, 1.0), bass=(0.5, 0.9), chords=(0.4, 0.8),
                                          lead=(0.2, 0.5)),
                 Arrangement(intro_prob=0.4, intro_keeps=('drums', 'texture'), break_prob=0.35,
                             break_keeps=('drums', 'bass', 'texture')))
  d = p.layers['drums']
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.15, 0.3)), ['x...x...x...x...'])
  play_hits(ctx, score, d, clap(ctx) if rng.random() < 0.5 else snare_drum(ctx), ['....x.......x...'], level=0.8)
  play_hits(ctx, score, d, open_hat(ctx), ['..x...x...x...x.'], level=0.5)
  play_hits(ctx, score, d, hat(ctx), ['xoxoxoxoxoxoxoxo' if rng.random() < 0.6 else 'x.x.x.x.x.x.x.x.'],
            level=0.3)
  key = 33 + int(rng.integers(0, 12))
  prog = progression(ctx, ([(0, 'min7'), (5, 'min7')], [(0, 'maj7'), (2, 'min7'), (9, 'min7'), (7, 'dom7')],
                           [(9, 'min7'), (2, 'min7'), (7, 'dom7'), (0, 'maj7')], [(0, 'min7'), (10, 'dom7')]))
  bass = Voice(ctx, harmonic_profile(14, 1.0), cutoff_hz=rng.uniform(700, 1500), decay=0.12, dull_decay=0.3)
  strings = Voice(ctx, harmonic_profile(24, 1.0), cutoff_hz=rng.uniform(2500, 5000), sustained=True,
                  attack=rng.uniform(0.05, 0.2), decay=0.2, vibrato_cents=8)
  stabs = rng.random() < 0.5
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step in range(0, 16, 2):
      octave = 12 if step % 4 == 2 else 0  # the disco octave bass
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.6), fold(key + off, 33, 45) + octave)
    if stabs:
      for step in (2, 6, 10, 14):
        strings.play(p.layers['chords'], score.at(bar, step), score.dur(1.5), key + 24 + off, chord, 0.9)
    else:
      strings.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 24 + off, chord, 0.8)
  lead = Voice(ctx, harmonic_profile(10, 1.3), cutoff_hz=4000, decay=0.08, dull_decay=0.2)  # muted rhythm guitar
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step in range(16):
      if rng.random() < 0.7:
        lead.play(p.layers['lead'], score.at(bar, step), score.dur(0.8), key + 36 + off, chord,
                  vel=0.5 + 0.5 * (step % 2))
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3))
  return p


def classical_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(60, 120), steps=16, bars=4)
  p = new_phrase(ctx, score, layer_levels(ctx, bass=(0.4, 0.8), chords=(0.4, 0.8), lead=(0.5, 0.9)),
                 Arrangement(intro_prob=0.3, intro_keeps=('chords', 'bass', 'texture'), break_prob=0.3,
                             break_keeps=('chords', 'lead', 'texture'), lead_prob=0.85),
                 snr_db=(35, 60))
  key = 36 + int(rng.integers(0, 12))
  minor = rng.random() < 0.4
  prog = progression(ctx, ([(0, 'min'), (5, 'min'), (7, 'maj'), (0, 'min')],
                           [(0, 'min'), (8, 'maj'), (5, 'min'), (7, 'maj')]) if minor
                     else ([(0, 'maj'), (5, 'maj'), (7, 'maj'), (0, 'maj')],
                           [(0, 'maj'), (9, 'min'), (5, 'maj'), (7, 'maj')],
                           [(0, 'maj'), (2, 'min'), (7, 'dom7'), (0, 'maj')]))
  scale = MINOR if minor else MAJOR
  if rng.random() < 0.5:  # string ensemble
    bowed = dict(sustained=True, attack=rng.uniform(0.15, 0.4), decay=0.3, vibrato_hz=rng.uniform(4.5, 6.5))
    section = Voice(ctx, harmonic_profile(24, 0.9, formant=0.8, formant_at=3), cutoff_hz=rng.uniform(2500, 5000),
                    vibrato_cents=rng.uniform(6, 15), **bowed)
    cello = Voice(ctx, harmonic_profile(20, 1.0, formant=1.0, formant_at=2), cutoff_hz=2000,
                  vibrato_cents=rng.uniform(8, 15), **bowed)
    violin = Voice(ctx, harmonic_profile(24, 0.8, formant=1.0, formant_at=4), cutoff_hz=rng.uniform(3000, 6000),
                   vibrato_cents=rng.uniform(15, 30), **bowed)
    for bar in range(score.num_bars):
      off, chord = chord_at(prog, bar)
      section.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 12 + off, chord, 0.8)
      for half in (0, 8):
        cello.play(p.layers['bass'], score.at(bar, half), score.dur(8), fold(key + off, 36, 48)
                   + (7 if half and rng.random() < 0.5 else 0))
    melody(ctx, violin, p.layers['lead'], score, key + 24, scale, lengths=(4, 4, 8, 2, 2), rest_prob=0.05,
           vel=0.8, leap=2, span=(4, 16))
  else:  # piano: arpeggiated accompaniment under a melody
    piano = Voice(ctx, harmonic_profile(20, 1.3), cutoff_hz=rng.uniform(2500, 5000), decay=rng.uniform(0.3, 0.7),
                  dull_decay=rng.uniform(1.0, 2.5), dull_mix=0.8)
    figure = pick(ctx, ((0, 2, 1, 2), (0, 1, 2, 1), (0, 1, 2, 3)))
    for bar in range(score.num_bars):
      off, chord = chord_at(prog, bar)
      tones = [0, 3 if chord == 'min' else 4, 7, 12]
      for i in range(8):
        piano.play(p.layers['chords'], score.at(bar, 2 * i), score.dur(4), key + 12 + off + tones[figure[i % 4]],
                   vel=rng.uniform(0.5, 0.7))
      piano.play(p.layers['bass'], score.at(bar, 0), score.dur(16), fold(key + off, 36, 48), vel=0.8)
    melody(ctx, piano, p.layers['lead'], score, key + 24, scale, lengths=(4, 4, 2, 2, 8), rest_prob=0.1,
           vel=0.9, leap=2, span=(4, 14))
  for name in ('chords', 'lead'):  # a hall; the bass stays drier
    p.layers[name] = room(ctx, p.layers[name], rng.uniform(0.3, 0.6), rng.uniform(0.3, 0.8))
  return p


def ambient_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(50, 80), steps=16, bars=4)
  p = new_phrase(ctx, score, layer_levels(ctx, bass=(0.3, 0.7), chords=(0.5, 1.0), texture=(1.0, 1.0)),
                 Arrangement(intro_prob=0.3, intro_keeps=('chords', 'texture'), break_prob=0.3,
                             break_keeps=('chords', 'lead', 'texture'), lead_prob=0.7),
                 snr_db=(25, 45))
  key = 36 + int(rng.integers(0, 12))
  prog = progression(ctx, ([(0, 'sus2'), (5, 'maj7')], [(0, 'min9'), (8, 'maj7')], [(0, 'maj7'), (4, 'min7')],
                           [(0, 'sus2'), (10, 'sus2')], [(0, 'min9')]))
  pad = Voice(ctx, harmonic_profile(16, rng.uniform(1.0, 2.0)), cutoff_hz=rng.uniform(500, 1800), sustained=True,
              attack=rng.uniform(1.0, 3.0), decay=rng.uniform(1.5, 3.0))
  drone = Voice(ctx, harmonic_profile(4, 2.0), cutoff_hz=400, sustained=True, attack=2.0, decay=2.0)
  chord_bars = 2
  for bar in range(0, score.num_bars, chord_bars):
    off, chord = chord_at(prog, bar // chord_bars)
    length = min(score.length, int(chord_bars * score.bar_len * rng.uniform(1.1, 1.4)))  # overlapping swells
    pad.play(p.layers['chords'], score.at(bar, 0), length, key + 12 + off, chord, 0.9)
  drone.play(p.layers['bass'], 0, score.length, fold(key, 28, 40), 'pow', 1.0)
  scale = PENT_MAJOR if rng.random() < 0.5 else PENT_MINOR
  for bar in range(score.num_bars):
    if rng.random() < 0.6:
      bell(ctx, p.layers['chords'], score.at(bar, int(rng.integers(0, 16))),
           scale_note(key + 36, scale, int(rng.integers(0, 8))), rng.uniform(1.5, 4.0), rng.uniform(0.3, 0.8))
  # Wind: low-passed noise swelling slowly; a short buffer laid end to end with a gain per copy.
  tex = p.layers['texture']
  wind = smooth(white_noise(ctx, min(tex.shape[0], ctx.sr)), int(rng.integers(3, 7)))
  wind *= np.float32(rng.uniform(0.0, 0.05) / max(1e-6, float(np.abs(wind).max())))
  period, phase = rng.uniform(6, 15), rng.uniform(0, 2 * np.pi)
  for start in range(0, tex.shape[0], wind.shape[0]):
    swell = 0.5 + 0.5 * math.sin(2 * np.pi * start / ctx.sr / period + phase)
    add_looped(tex, start, wind[:tex.shape[0] - start], swell)
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.4, 0.7), rng.uniform(0.5, 1.5))
  return p
