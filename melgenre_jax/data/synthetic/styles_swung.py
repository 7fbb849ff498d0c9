"""Styles on a swung or triplet grid: funk, hip-hop, reggae (swung 16ths), jazz, blues (triplets).

Each renders one phrase; tempos, grids and patterns are what set them apart.
"""

from __future__ import annotations

import numpy as np

from melgenre_jax.data.synthetic.dsp import (
    Arrangement, Ctx, Phrase, distort, new_phrase, room, make_score)
from melgenre_jax.data.synthetic.instruments import (
    DORIAN, PENT_MAJOR, PENT_MINOR, VELOCITY, Voice, chord_at, clap, fold, harmonic_profile, hat, play_hits,
    kick_drum, layer_levels, melody, pick, progression, ride, rim, snare_drum, with_fill)


def funk_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(95, 115), steps=16, bars=2, swing=rng.uniform(0.0, 0.15))
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.6, 1.0), bass=(0.6, 1.0), chords=(0.4, 0.8),
                                          lead=(0.3, 0.6)),
                 Arrangement(intro_prob=0.35, intro_keeps=('drums', 'texture'), break_prob=0.4,
                             break_keeps=('drums', 'bass', 'texture'), lead_prob=0.5))
  d = p.layers['drums']
  kick = pick(ctx, ('x..x..x...x..x..', 'x.x...x..x.x....', 'x......x..x..x..'))
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.1, 0.2)), [kick])
  snare = pick(ctx, ('....x..g.g..x..g', '....x.g....gx.g.', '.g..x..g.g.gx...'))  # backbeat + ghosts
  play_hits(ctx, score, d, snare_drum(ctx, decay=(0.05, 0.12)), [snare])
  play_hits(ctx, score, d, hat(ctx), ['xoxoxoxoxoxoxoxo'], level=0.45, jitter_ms=2)
  key = 33 + int(rng.integers(0, 12))
  prog = progression(ctx, ([(0, 'dom9')], [(0, 'min7'), (5, 'dom9')], [(0, 'dom9'), (0, 'dom9'), (5, 'dom9'),
                                                                         (0, 'dom9')], [(0, 'min9')]))
  slap = Voice(ctx, harmonic_profile(20, 0.9), cutoff_hz=rng.uniform(1500, 3000), decay=0.06, dull_decay=0.25,
               dull_mix=1.0)
  line = pick(ctx, ('x..x.x..x.xx..x.', 'x.x..xx...x.x.xx', 'x...x.xx..x..xx.'))
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step, char in enumerate(line):
      if char == 'x':
        pop = 12 if rng.random() < 0.25 else (7 if rng.random() < 0.15 else 0)
        slap.play(p.layers['bass'], score.at(bar, step), score.dur(0.9), fold(key + off, 31, 43) + pop,
                  vel=rng.uniform(0.7, 1.0))
  chank = Voice(ctx, harmonic_profile(18, 0.8), cutoff_hz=rng.uniform(3000, 5000), decay=rng.uniform(0.02, 0.05),
                dull_decay=0.06, dull_mix=0.3)
  scratch = pick(ctx, ('..x.g.x...x.g.x.', 'g.x.g.xg.gx.g.x.', 'x.gx.gx.x.gx.g.x'))
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step, char in enumerate(scratch):
      if char in VELOCITY:
        chank.play(p.layers['chords'], score.at(bar, step), score.dur(0.7), key + 24 + off, chord,
                   vel=VELOCITY[char])
  horns = Voice(ctx, harmonic_profile(18, 0.8, formant=1.5, formant_at=5), cutoff_hz=rng.uniform(2000, 4000),
                sustained=True, attack=0.02, decay=0.05, vibrato_cents=10)
  hits = pick(ctx, ('x..x......x.....', '......x.x..x....', 'x.......x.x.....'))
  for bar in range(0, score.num_bars, 2):
    off, chord = chord_at(prog, bar)
    for step, char in enumerate(hits):
      if char == 'x':
        horns.play(p.layers['lead'], score.at(bar, step), score.dur(1.5), key + 36 + off, 'maj', 0.8)
  return p


def hiphop_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(85, 100), steps=16, bars=2, swing=rng.uniform(0.1, 0.35))
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.7, 1.0), bass=(0.5, 1.0), chords=(0.3, 0.7),
                                          lead=(0.0, 0.3), texture=(1.0, 1.0)),
                 Arrangement(intro_prob=0.45, intro_keeps=('chords', 'texture'), break_prob=0.3,
                             break_keeps=('drums', 'bass', 'texture'), lead_prob=0.3),
                 snr_db=(22, 40))
  d = p.layers['drums']
  kick = pick(ctx, ('x......x.x......', 'x.....x...x.x...', 'x..x......x..x..', 'x.x.......x.....'))
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.2, 0.45), low=(42, 55)), [kick], jitter_ms=5)
  play_hits(ctx, score, d, snare_drum(ctx, decay=(0.1, 0.2)), ['....x.......x...'], jitter_ms=5)
  if rng.random() < 0.5:
    play_hits(ctx, score, d, clap(ctx), ['....x.......x...'], level=0.5)
  play_hits(ctx, score, d, hat(ctx), [pick(ctx, ('x.x.x.x.x.x.x.x.', 'xoxoxoxoxoxoxoxo', 'x.xox.x.x.xox.x.'))],
            level=0.4, jitter_ms=6)
  key = 30 + int(rng.integers(0, 12))
  prog = progression(ctx, ([(0, 'min7'), (5, 'min7')], [(0, 'min9'), (8, 'maj7')], [(0, 'min7'), (3, 'maj7')],
                           [(0, 'min7')]))
  # 808: a long sine-ish bass that follows the kick.
  sub = Voice(ctx, harmonic_profile(3, 2.5), cutoff_hz=300, decay=rng.uniform(0.3, 0.7), dull_decay=1.0, dull_mix=0.0)
  keys = Voice(ctx, np.array([1.0, 0.35, 0.12, 0.06, 0.03, 0.02]), cutoff_hz=rng.uniform(800, 2000),
               sustained=True, attack=0.01, decay=0.3)
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step, char in enumerate(kick):
      if char == 'x':
        sub.play(p.layers['bass'], score.at(bar, step), score.dur(3.5), fold(key + off, 28, 40))
    keys.play(p.layers['chords'], score.at(bar, 0), score.bar_len, key + 24 + off, chord, 0.8)
  # Electric-piano tremolo: a whole number of wobbles per bar, so one bar's gain curve tiles.
  chords = p.layers['chords']
  wobbles = max(1, round(rng.uniform(3, 6) * score.bar_len / ctx.sr))
  bar_t = ctx.time(score.bar_len)
  trem = 1.0 + np.float32(rng.uniform(0.0, 0.3)) * np.sin(bar_t * np.float32(2 * np.pi * wobbles * ctx.sr
                                                                              / score.bar_len))
  chords *= np.resize(trem, chords.shape[0])
  p.layers['chords'] = room(ctx, chords, rng.uniform(0.1, 0.4), rng.uniform(0.1, 0.4))
  lead = Voice(ctx, harmonic_profile(6, 2.0), cutoff_hz=2500, sustained=True, attack=0.02, decay=0.1)
  melody(ctx, lead, p.layers['lead'], score, key + 36, PENT_MINOR, lengths=(2, 4, 4), rest_prob=0.5, vel=0.6)
  # Vinyl: crackle clicks and a low rumble ride on the texture layer.
  tex = p.layers['texture']
  clicks = rng.integers(0, tex.shape[0], int(rng.uniform(8, 40) * tex.shape[0] / ctx.sr))
  tex[clicks] += rng.uniform(-1, 1, clicks.shape[0]).astype(np.float32) * np.float32(rng.uniform(0.05, 0.3))
  return p


def jazz_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(110, 200), steps=12, bars=4)  # triplet grid: swing feel
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.3, 0.7), bass=(0.6, 1.0), chords=(0.4, 0.8),
                                          lead=(0.4, 0.8)),
                 Arrangement(intro_prob=0.3, intro_keeps=('bass', 'chords', 'texture'), break_prob=0.3,
                             break_keeps=('drums', 'bass', 'texture'), lead_prob=0.6))
  d = p.layers['drums']
  play_hits(ctx, score, d, ride(ctx), ['x..x.xx..x.x'], level=0.6, jitter_ms=4)
  play_hits(ctx, score, d, hat(ctx), ['...x.....x..'], level=0.4)
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.1, 0.2)), ['g..g..g..g..'], level=0.8)
  comp = ''.join('g' if rng.random() < 0.12 else '.' for _ in range(12 * score.num_bars))
  play_hits(ctx, score, d, snare_drum(ctx, decay=(0.1, 0.25)),
            [comp[i * 12:(i + 1) * 12] for i in range(score.num_bars)], level=0.7)
  key = 36 + int(rng.integers(0, 12))
  prog = progression(ctx, ([(2, 'min7'), (7, 'dom7'), (0, 'maj7'), (0, 'maj7')],
                           [(2, 'min7'), (7, 'dom7'), (0, 'maj7'), (9, 'dom7')],
                           [(0, 'maj7'), (9, 'min7'), (2, 'min7'), (7, 'dom7')],
                           [(0, 'min7'), (5, 'dom7'), (10, 'maj7'), (3, 'maj7')]))
  upright = Voice(ctx, harmonic_profile(10, 2.0), cutoff_hz=rng.uniform(500, 1000), decay=0.15, dull_decay=0.6,
                  dull_mix=1.2)
  for bar in range(score.num_bars):  # walking bass: chord tones, then a chromatic approach
    off, chord = chord_at(prog, bar)
    nxt, _ = chord_at(prog, bar + 1)
    third = 3 if chord.startswith('min') else 4
    root = fold(key + off, 28, 40)
    target = fold(key + nxt, 28, 40)
    notes = (root, root + pick(ctx, (third, 7, 12)), root + pick(ctx, (7, third, 5, 12)),
             target + pick(ctx, (-1, 1, 2)))
    for beat, note in enumerate(notes):
      upright.play(p.layers['bass'], score.at(bar, beat * 3), score.dur(2.8), note, vel=rng.uniform(0.8, 1.0))
  piano = Voice(ctx, harmonic_profile(16, 1.4), cutoff_hz=rng.uniform(2000, 4000), decay=rng.uniform(0.2, 0.5),
                dull_decay=rng.uniform(0.6, 1.5))
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for _ in range(int(rng.integers(1, 4))):
      step = int(pick(ctx, (0, 2, 3, 5, 6, 8, 9, 11)))
      piano.play(p.layers['chords'], score.at(bar, step), score.dur(rng.uniform(1.5, 5)), key + 12 + off, chord,
                 vel=rng.uniform(0.5, 0.9))
  horn = Voice(ctx, harmonic_profile(16, 1.1, formant=2.0, formant_at=rng.integers(3, 6)),
               cutoff_hz=rng.uniform(1500, 3000), sustained=True, attack=0.03, decay=0.06,
               vibrato_cents=rng.uniform(10, 25), vibrato_hz=rng.uniform(4.5, 6))
  melody(ctx, horn, p.layers['lead'], score, key + 12 + 12 * int(rng.integers(0, 2)), DORIAN,
         lengths=(2, 1, 3, 3, 6), rest_prob=0.2, vel=0.8, span=(3, 14))
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3))
  return p


def blues_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(70, 110), steps=12, bars=4)  # shuffle: a triplet grid
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.5, 0.9), bass=(0.5, 0.9), chords=(0.5, 0.9),
                                          lead=(0.4, 0.8)),
                 Arrangement(intro_prob=0.3, intro_keeps=('chords', 'lead', 'texture'), break_prob=0.25,
                             break_keeps=('drums', 'bass', 'lead', 'texture'), lead_prob=0.6))
  d = p.layers['drums']
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.12, 0.25)), ['x.....x.....'])
  play_hits(ctx, score, d, snare_drum(ctx, decay=(0.08, 0.2)), with_fill(score, '...x.....x..', '...x.....xxx'))
  play_hits(ctx, score, d, hat(ctx) if rng.random() < 0.6 else ride(ctx), ['x.xx.xx.xx.x'], level=0.5)
  key = 38 + int(rng.integers(0, 8))
  form = pick(ctx, ([0, 5, 0, 7], [0, 0, 5, 7], [0, 5, 7, 5], [0, 0, 0, 5]))  # I7 / IV7 / V7 moves
  bass = Voice(ctx, harmonic_profile(10, 1.6), cutoff_hz=rng.uniform(600, 1200), decay=0.2, dull_decay=0.5)
  guitar = Voice(ctx, harmonic_profile(18, 1.1), cutoff_hz=rng.uniform(1800, 3200), decay=0.2, dull_decay=0.7)
  boogie = (0, 4, 7, 9, 10, 9, 7, 4)
  for bar in range(score.num_bars):
    off = form[bar % len(form)]
    for i, interval in enumerate(boogie):  # shuffled eighths: on the beat and on its last triplet
      step = (i // 2) * 3 + (2 if i % 2 else 0)
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(1.8 if i % 2 == 0 else 0.9),
                fold(key + off, 28, 40) + interval)
    for beat in range(4):
      for step, length in ((beat * 3, 1.8), (beat * 3 + 2, 0.9)):
        guitar.play(p.layers['chords'], score.at(bar, step), score.dur(length), key + 12 + off,
                    'dom7', vel=1.0 if step % 3 == 0 else 0.6)
  p.layers['chords'] = distort(p.layers['chords'], rng.uniform(1.2, 4.0))
  lead = Voice(ctx, harmonic_profile(16, 1.1), cutoff_hz=rng.uniform(2000, 3500), sustained=True, attack=0.01,
               decay=0.08, vibrato_cents=rng.uniform(25, 60), vibrato_hz=rng.uniform(4, 6))
  melody(ctx, lead, p.layers['lead'], score, key + 24, PENT_MINOR, lengths=(2, 3, 3, 6), rest_prob=0.35,
         vel=0.8, span=(2, 9))
  p.layers['lead'] = distort(p.layers['lead'], rng.uniform(1.5, 5.0))
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.05, 0.35), rng.uniform(0.05, 0.3))
  return p


def reggae_phrase(ctx: Ctx) -> Phrase:
  rng = ctx.rng
  score = make_score(ctx, rng.uniform(60, 80), steps=16, bars=2, swing=rng.uniform(0.0, 0.25))
  p = new_phrase(ctx, score, layer_levels(ctx, drums=(0.5, 0.9), bass=(0.5, 0.9), chords=(0.5, 0.9),
                                          lead=(0.2, 0.5)),
                 Arrangement(intro_prob=0.3, intro_keeps=('drums', 'chords', 'texture'), break_prob=0.45,
                             break_keeps=('drums', 'bass', 'texture'), lead_prob=0.7))
  d = p.layers['drums']
  steppers = rng.random() < 0.25
  play_hits(ctx, score, d, kick_drum(ctx, decay=(0.15, 0.3)), ['x...x...x...x...' if steppers else '........x.......'])
  play_hits(ctx, score, d, rim(ctx), with_fill(score, '........x.......', '........x...x.xx'), level=0.8)
  play_hits(ctx, score, d, hat(ctx), [pick(ctx, ('x.x.x.x.x.x.x.x.', 'x.xxx.xxx.xxx.xx'))], level=0.4)
  key = 33 + int(rng.integers(0, 12))
  minor = rng.random() < 0.5
  prog = progression(ctx, ([(0, 'min'), (5, 'min')], [(0, 'min'), (10, 'maj')]) if minor
                     else ([(0, 'maj'), (5, 'maj')], [(0, 'maj'), (7, 'maj')]))
  bass = Voice(ctx, harmonic_profile(6, 2.0), cutoff_hz=rng.uniform(300, 600), decay=0.3, dull_decay=0.8, dull_mix=1.0)
  scale = PENT_MINOR if minor else PENT_MAJOR
  line = pick(ctx, ([(0, 3, 0), (4, 2, 0), (6, 2, 2), (10, 2, 1), (12, 3, 3)],
                    [(0, 6, 0), (8, 2, 0), (10, 2, 2), (12, 2, 3), (14, 2, 2)],
                    [(2, 2, 0), (4, 4, 0), (10, 2, 4), (12, 4, 3)]))
  skank = Voice(ctx, harmonic_profile(16, 0.9), cutoff_hz=rng.uniform(2500, 4500), decay=0.05, dull_decay=0.1,
                dull_mix=0.4)
  organ = Voice(ctx, np.array([1.0, 0.8, 0.5, 0.6, 0.0, 0.4, 0.0, 0.3]), cutoff_hz=3000, sustained=True,
                attack=0.005, decay=0.02)
  skank_steps = (4, 12) if rng.random() < 0.5 else (2, 6, 10, 14)  # the off-beat chop
  for bar in range(score.num_bars):
    off, chord = chord_at(prog, bar)
    for step, length, degree in line:
      bass.play(p.layers['bass'], score.at(bar, step), score.dur(length * 0.9),
                fold(key + off, 28, 40) + scale[degree % len(scale)])
    for step in skank_steps:
      skank.play(p.layers['chords'], score.at(bar, step), score.dur(1.2), key + 24 + off, chord, 0.9)
    for step in (3, 5, 11, 13):  # organ bubble
      organ.play(p.layers['lead'], score.at(bar, step), score.dur(0.8), key + 12 + off, chord, 0.6)
  p.layers['chords'] = room(ctx, p.layers['chords'], rng.uniform(0.2, 0.5), rng.uniform(0.2, 0.5))
  p.layers['drums'] = room(ctx, p.layers['drums'], rng.uniform(0.0, 0.3), rng.uniform(0.1, 0.4), stages=2)
  return p
