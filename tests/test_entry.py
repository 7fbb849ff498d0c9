"""main.py on input a new user gets wrong: one line saying what to do, status 1, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), *args], cwd=cwd,
                        capture_output=True, text=True, timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
  """The error line (the last of stderr), after checking the run failed without a traceback."""
  assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
  assert 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if 'Error' in l]
  assert len(lines) == 1, proc.stderr[-2000:]
  return lines[0]


def _write(path, text: str) -> str:
  path.write_text(text)
  return str(path)


def test_missing_config_file(tmp_path):
  line = _one_error_line(_main('--config', 'configs/nope.py', '--workdir', str(tmp_path / 'w')))
  assert 'configs/nope.py: no such file' in line and 'configs/synthetic.py' in line


def test_missing_config_file_with_an_override(tmp_path):
  line = _one_error_line(_main('--config', 'configs/nope.py', '--config.seed=1',
                               '--workdir', str(tmp_path / 'w')))
  assert 'configs/nope.py: no such file' in line


def test_config_file_with_a_syntax_error(tmp_path):
  config = _write(tmp_path / 'broken.py', 'def get_config(:\n  pass\n')
  line = _one_error_line(_main('--config', config, '--workdir', str(tmp_path / 'w')))
  assert f'--config {config}: line 1' in line and 'fix the file' in line


def test_config_file_without_get_config(tmp_path):
  config = _write(tmp_path / 'empty.py', 'SEED = 0\n')
  line = _one_error_line(_main('--config', config, '--workdir', str(tmp_path / 'w')))
  assert 'has no get_config()' in line


def test_config_file_whose_code_fails_names_its_line(tmp_path):
  config = _write(tmp_path / 'typo.py', 'import ml_collections\n\n\ndef get_config():\n'
                  '  config = ml_collections.ConfigDict()\n  return config.sed\n')
  line = _one_error_line(_main('--config', config, '--workdir', str(tmp_path / 'w')))
  assert f'--config {config}: line 6: AttributeError' in line and 'override' not in line


def test_unknown_config_field_shows_the_did_you_mean_hint(tmp_path):
  line = _one_error_line(_main('--config', 'configs/tiny.py', '--config.batch_sise=8',
                               '--workdir', str(tmp_path / 'w')))
  assert "no field 'batch_sise'" in line
  assert 'Did you mean "batch_size" instead of "batch_sise"?' in line


def test_workdir_that_is_a_file(tmp_path):
  workdir = _write(tmp_path / 'run.txt', 'not a folder')
  line = _one_error_line(_main('--config', 'configs/tiny.py', '--workdir', workdir))
  assert 'WorkdirError' in line and 'is a file, not a folder' in line


@pytest.mark.parametrize('text', ['{"seed": 0,', '[1, 2]'])
def test_corrupt_workdir_config(tmp_path, text):
  os.makedirs(tmp_path / 'run')
  _write(tmp_path / 'run' / 'config.json', text)
  line = _one_error_line(_main('--workdir', str(tmp_path / 'run'), '--mode', 'eval'))
  assert 'WorkdirError' in line and 'config.json' in line and 'new --workdir' in line


def _predict_workdir(tmp_path) -> tuple[str, str]:
  """A workdir with a config (the output checks come before any checkpoint is read) and a song."""
  from configs import tiny  # pylint: disable=g-import-not-at-top
  os.makedirs(tmp_path / 'run')
  _write(tmp_path / 'run' / 'config.json', tiny.get_config().to_json_best_effort())
  return str(tmp_path / 'run'), _write(tmp_path / 'song.wav', 'never read')


def test_csv_of_another_top_k_names_both_values(tmp_path):
  from melgenre_jax.modes.predict import output  # pylint: disable=g-import-not-at-top
  workdir, song = _predict_workdir(tmp_path)
  log = _write(tmp_path / 'p.csv', ','.join(output.csv_header(5)) + '\n')
  line = _one_error_line(_main('--workdir', workdir, '--mode', 'predict', '--output', 'csv',
                               '--output_file', log, song))
  assert 'written with --top_k 5, this run asks for --top_k 3: pass --top_k 5' in line


def test_foreign_csv_lists_both_column_lists_in_full(tmp_path):
  from melgenre_jax.modes.predict import output  # pylint: disable=g-import-not-at-top
  workdir, song = _predict_workdir(tmp_path)
  theirs = ['path', 'status', 'reason', 'duration_seconds', 'segments', 'artist', 'album']
  log = _write(tmp_path / 'p.csv', ','.join(theirs) + '\n')
  line = _one_error_line(_main('--workdir', workdir, '--mode', 'predict', '--output', 'csv',
                               '--output_file', log, song))
  assert f'its columns are {",".join(theirs)};' in line
  assert f'ours are {",".join(output.csv_header(3))})' in line and '--top_k' not in line


def test_csv_onto_a_json_report_does_not_blame_top_k(tmp_path):
  workdir, song = _predict_workdir(tmp_path)
  report = _write(tmp_path / 'report.txt', '{\n "results": []\n}\n')
  line = _one_error_line(_main('--workdir', workdir, '--mode', 'predict', '--output', 'csv',
                               '--output_file', report, song))
  assert 'is not a predictions CSV' in line and '--top_k' not in line
