"""The README's predict command lines run verbatim (read from the README, so the two cannot drift)."""

import csv
import os
import shlex
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from melgenre_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = 'python main.py --workdir runs/synthetic --mode predict'


def readme_predict_commands() -> list[str]:
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    return [line.split('  #')[0].strip() for line in f if line.startswith(PREFIX)]


# Flags of main.py that take the next argument as their value (the rest name audio).
_VALUE_FLAGS = ('--workdir', '--mode', '--output', '--output_file', '--top_k', '--step',
                '--offset_seconds', '--max_seconds', '--hop_seconds', '--min_confidence')


def _song(path: str, genre: str, sample_rate: int = 22050, seconds: float = 3.0) -> None:
  wave = synthetic.synthesize_song(f'synthetic/{genre}/0100', sample_rate, seconds)
  sf.write(path, np.asarray(wave, np.float32), sample_rate)


def _named_inputs(args: list[str]) -> list[str]:
  """The audio a command line names (positional paths and --audio values)."""
  out, skip = [], False
  for a in args:
    if skip:
      skip = False
    elif a in _VALUE_FLAGS:
      skip = True
    elif a == '--audio':
      continue
    elif not a.startswith('-'):
      out.append(a)
  return out


def test_readme_has_predict_examples_with_positional_paths_and_globs():
  commands = readme_predict_commands()
  assert len(commands) >= 3, commands
  assert any(not shlex.split(c)[len(shlex.split(PREFIX)):][0].startswith('--') for c in commands)
  assert any('*' in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize('command', readme_predict_commands())
def test_readme_predict_command_runs_verbatim(command, tiny_run, tmp_path):
  """Each line in a folder holding the files it names, with the tiny run as runs/synthetic."""
  os.makedirs(tmp_path / 'runs')
  shutil.copytree(tiny_run, tmp_path / 'runs' / 'synthetic')
  os.makedirs(tmp_path / 'my_folder' / 'sub')
  _song(str(tmp_path / 'my_folder' / 'a.wav'), 'blues')
  _song(str(tmp_path / 'my_folder' / 'sub' / 'b.flac'), 'classical', 16000)
  _song(str(tmp_path / 'song.mp3'), 'ambient', 44100, seconds=40.0)  # an excerpt from 0:30
  _song(str(tmp_path / 'other.flac'), 'disco')
  _song(str(tmp_path / 'third.flac'), 'blues')
  argv = shlex.split(command)
  assert argv[:2] == ['python', 'main.py']
  argv = [sys.executable, os.path.join(ROOT, 'main.py')] + argv[2:]
  proc = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                        check=False)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert 'SKIPPED' not in proc.stdout, proc.stdout
  predictions = tmp_path / 'runs' / 'synthetic' / 'predictions'
  named = _named_inputs(argv[2:])
  if '--output json' in command:
    assert os.path.exists(predictions / 'predictions.json')
  elif '--output csv' in command:
    with open(predictions / 'predictions.csv', newline='') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) >= len(named) and all(r['status'] != 'skipped' for r in rows), rows
  else:
    classified = proc.stdout.count(' segment')
    assert classified >= len(named), (named, proc.stdout)
  if '--write_tags' in command:
    assert 'Genre tags' in proc.stdout, proc.stdout
  if '--plot' in command:
    assert any(n.endswith('_timeline.png') for n in
               os.listdir(tmp_path / 'runs' / 'synthetic' / 'predictions'))


def test_audio_flag_values_split_at_commas_unless_the_file_exists(tmp_path):
  from melgenre_jax.modes import dispatch  # pylint: disable=g-import-not-at-top
  comma = tmp_path / 'Artist, The - Song.wav'
  comma.write_bytes(b'')
  assert dispatch.audio_paths(['a.mp3,b.flac', str(comma)], ['c/']) == [
      'a.mp3', 'b.flac', str(comma), 'c/']


def test_expand_paths_expands_a_quoted_wildcard(tmp_path):
  from melgenre_jax.modes import predict  # pylint: disable=g-import-not-at-top
  for name in ('x.flac', 'y.flac', 'z.wav'):
    (tmp_path / name).write_bytes(b'')
  pattern = str(tmp_path / '*.flac')
  assert [p for p, _ in predict.expand_paths([pattern])] == [
      str(tmp_path / 'x.flac'), str(tmp_path / 'y.flac')]
  assert predict.expand_paths([str(tmp_path / '*.ogg')]) == [
      (str(tmp_path / '*.ogg'), 'file not found')]


@pytest.mark.slow
def test_positional_paths_outside_predict_are_refused():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--workdir', '/tmp/x',
                         '--mode', 'eval', 'song.mp3'], capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode != 0 and 'only --mode=predict takes audio paths' in proc.stderr
