"""Built-in synthetic genre set: ten synthesised music styles, rendered on the fly.

Why it exists: a new user's first run must train without downloading anything,
and the task must still be real: styles differ the way genres do (tempo range,
drum pattern, bass line, harmony, timbre) while per-song randomness (key, tempo,
mix levels, room, brightness, noise floor, arrangement) lets neighbouring
styles overlap, so a model has to learn time-frequency patterns rather than a
single trivial cue.

How it stays fast (a 30 s song costs roughly 40 numpy passes over its samples;
its measured CPU time is in benchmarks/README.md): a song is a loop of a few bars
(a *phrase*) rendered once into per-layer buffers (drums, bass, chords, lead,
texture) with wavetable oscillators and short one-shot drum samples, then laid
out bar by bar with per-bar arrangement gains (intros, breakdowns). Every
effect on the phrase is circular, so repeats join seamlessly. Chords use one
wavetable per chord: in just intonation the chord tones are harmonics of a
common fundamental (a major triad is 4:5:6), so one table lookup renders the
whole chord.

Determinism: the per-song generator is seeded from a SHA-256 of the song key,
so the same key always gives bit-identical audio (on one platform).

Modules: ``dsp`` (rendering context, timing grid, phrase, oscillators and
effects), ``instruments`` (voices, drum one-shots and patterns, melodies),
``styles_straight`` / ``styles_swung`` (one phrase per genre), ``render`` (song
list and keys, style dispatch, arrangement and mixdown). Only the names below
are used outside the package.
"""

from melgenre_jax.data.synthetic.render import (
    GENRES, SWUNG, list_synthetic_songs, song_tags_for_key, synthesize_song, synthesize_style)

__all__ = ['GENRES', 'SWUNG', 'list_synthetic_songs', 'song_tags_for_key', 'synthesize_song',
           'synthesize_style']
