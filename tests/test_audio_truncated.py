"""A WAV/AIFF holding less than its header promises is named in a warning (#34 item 5).

libsndfile decodes such a file without an error, so before this a song cut in
half by an interrupted copy was classified (or trained on) without a word.
"""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax.data import audio
from melgenre_jax.data.audio import decode
from melgenre_jax.data.audio import headers

SR = 8000


def _cut(tmp_path, name: str, seconds: float = 4.0, keep: float = 0.5, **write) -> str:
  """A file written by soundfile, then cut to ``keep`` of its bytes (a copy interrupted)."""
  whole = tmp_path / f'whole_{name}'
  rng = np.random.default_rng(0)
  sf.write(str(whole), (0.1 * rng.standard_normal((int(seconds * SR), 2))).astype(np.float32),
           SR, **write)
  data = whole.read_bytes()
  path = tmp_path / name
  path.write_bytes(data[:int(len(data) * keep)])
  return str(path)


def _warnings(caplog, path: str) -> list[str]:
  return [r.getMessage() for r in caplog.records
          if r.levelname == 'WARNING' and path in r.getMessage()]


@pytest.fixture(autouse=True)
def _fresh_warnings(monkeypatch):
  monkeypatch.setattr(decode, '_WARNED_CUT_SHORT', set())


@pytest.mark.parametrize('name,write', [('cut.wav', {'subtype': 'PCM_16'}),
                                        ('cut24.wav', {'subtype': 'PCM_24'}),
                                        ('cut.aiff', {'format': 'AIFF', 'subtype': 'PCM_16'})])
def test_load_audio_names_the_file_and_what_is_missing(tmp_path, caplog, name, write):
  path = _cut(tmp_path, name, **write)
  wave = audio.load_audio(path, SR)
  said = _warnings(caplog, path)
  assert len(said) == 1, said
  assert 'header promises 4.00 s (32000 samples per channel)' in said[0]
  assert 'holds 2.00 s: 2.00 s (50%) missing' in said[0] and 'cut short' in said[0]
  assert abs(len(wave) - 2 * SR) < 8  # what is there is still decoded


def test_streaming_warns_once_per_file(tmp_path, caplog):
  path = _cut(tmp_path, 'cut.wav', keep=0.75, subtype='PCM_16')
  audio.probe(path)
  for _ in range(2):  # each iteration decodes afresh
    list(audio.stream_segments(path, SR, SR, SR, SR))
  audio.load_audio(path, SR)
  said = _warnings(caplog, path)
  assert len(said) == 1 and '1.00 s (25%) missing' in said[0], said


def test_whole_and_streamed_size_files_are_not_flagged(tmp_path, caplog):
  whole = _cut(tmp_path, 'whole.wav', keep=1.0, subtype='PCM_16')
  audio.load_audio(whole, SR)
  assert headers.shortfall(whole) is None
  # A writer that could not seek back leaves the data size unknown: no promise made.
  streamed = tmp_path / 'streamed.wav'
  data = bytearray((tmp_path / 'whole_whole.wav').read_bytes())
  at = data.index(b'data')
  data[at + 4:at + 8] = struct.pack('<I', 0xFFFFFFFF)
  streamed.write_bytes(bytes(data[:len(data) // 2]))
  assert headers.shortfall(str(streamed)) is None
  assert not [r for r in caplog.records if r.levelname == 'WARNING']


def test_other_formats_and_non_audio_give_none(tmp_path):
  flac = _cut(tmp_path, 'x.flac', keep=1.0, subtype='PCM_16')
  assert headers.shortfall(flac) is None
  (tmp_path / 'riff.wav').write_bytes(b'RIFF\x00\x00')
  assert headers.shortfall(str(tmp_path / 'riff.wav')) is None
  assert headers.shortfall(str(tmp_path / 'missing.wav')) is None


def test_training_data_summary_lists_the_cut_file_and_uses_what_is_there(tmp_path, caplog):
  from melgenre_jax.data import input_pipeline  # pylint: disable=g-import-not-at-top
  from tests.test_input_pipeline import _config  # pylint: disable=g-import-not-at-top
  root = tmp_path / 'music'
  for genre in ('jazz', 'rock'):
    (root / genre).mkdir(parents=True)
    for i in range(4):
      t = np.arange(SR) / SR
      sf.write(str(root / genre / f'{i}.wav'),
               (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), SR)
  cut = _cut(tmp_path, 'cut.wav', seconds=2.0, subtype='PCM_16')
  moved = str(root / 'jazz' / 'cut.wav')
  with open(cut, 'rb') as src, open(moved, 'wb') as dst:
    dst.write(src.read())
  input_pipeline.load_dataset(_config(source='folder', root=str(root), validation_fraction=0.25,
                                      test_fraction=0.25), str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'data_summary.json') as f:
    summary = json.load(f)
  assert [c['path'] for c in summary['cut_short_files']] == [moved]
  assert '1.00 s (50%) missing' in summary['cut_short_files'][0]['problem']
  assert summary['num_good'] == 9  # the part that is there is still trained on
  assert len(_warnings(caplog, moved)) == 1
