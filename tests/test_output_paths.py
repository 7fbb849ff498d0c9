"""Output paths are checked before any work: one line, nothing decoded or classified (#34)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from configs import tiny
from melgenre_jax import inference
from melgenre_jax import output_paths
from melgenre_jax.errors import ConfigError
from melgenre_jax.errors import OutputPathError
from melgenre_jax.errors import UserError
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import embed
from melgenre_jax.modes import export
from melgenre_jax.modes.predict import classify
from melgenre_jax.modes.predict import output as out_lib
from melgenre_jax.modes.predict import stream

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AS_ROOT = os.geteuid() == 0  # root writes anywhere: permission cases cannot fail


@pytest.fixture
def no_work(monkeypatch):
  """Any model load or decoding fails the test: the check must come first."""
  def forbidden(*args, **kwargs):
    raise AssertionError('work started before the output path was checked')
  monkeypatch.setattr(inference, 'load_for_inference', forbidden)
  monkeypatch.setattr(classify, 'iter_results', forbidden)
  monkeypatch.setattr(stream, 'file_jobs', forbidden)


def _song(tmp_path) -> str:
  path = tmp_path / 'song.wav'
  path.write_bytes(b'RIFF')  # never read
  return str(path)


def _predict(tmp_path, **options):
  return dispatch.run('predict', tiny.get_config(), str(tmp_path / 'work'),
                      dispatch.RunOptions(audio=(_song(tmp_path),), **options))


def test_json_output_file_that_is_a_folder_fails_before_any_work(tmp_path, no_work):
  folder = tmp_path / 'out'
  folder.mkdir()
  with pytest.raises(OutputPathError, match='is a folder; give a file name inside it') as e:
    _predict(tmp_path, output='json', output_file=str(folder))
  assert '\n' not in str(e.value)
  assert os.listdir(folder) == []  # no stray .tmp


def test_output_file_under_a_file_fails(tmp_path, no_work):
  blocker = tmp_path / 'plain'
  blocker.write_text('x')
  with pytest.raises(OutputPathError, match='is a file, not a folder'):
    _predict(tmp_path, output='csv', output_file=str(blocker / 'sub' / 'p.csv'))


def test_extension_of_the_other_format_fails(tmp_path, no_work):
  with pytest.raises(OutputPathError, match='ends in .csv but --output is json: pass '
                     '--output csv'):
    _predict(tmp_path, output='json', output_file=str(tmp_path / 'p.csv'))


def test_csv_onto_a_json_report_names_the_file_not_top_k(tmp_path, no_work):
  report = tmp_path / 'report.txt'
  report.write_text(json.dumps({'results': []}))
  with pytest.raises(OutputPathError, match='is not a predictions CSV') as e:
    _predict(tmp_path, output='csv', output_file=str(report))
  assert '--top_k' not in str(e.value)


def test_json_onto_a_csv_log_is_refused(tmp_path, no_work):
  log = tmp_path / 'p.out'
  log.write_text(','.join(out_lib.csv_header(3)) + '\n')
  with pytest.raises(OutputPathError, match='is not a JSON report'):
    _predict(tmp_path, output='json', output_file=str(log))


def test_csv_of_another_top_k_names_both_values(tmp_path, no_work):
  log = tmp_path / 'p.csv'
  log.write_text(','.join(out_lib.csv_header(5)) + '\n')
  with pytest.raises(ConfigError, match=r'written with --top_k 5, this run asks for '
                     r'--top_k 3: pass --top_k 5'):
    _predict(tmp_path, output='csv', output_file=str(log))
  # The same file with its own --top_k passes the check (and goes on to the work).
  out_lib.check_output_file(str(log), 'csv', 5)


def test_good_paths_pass_and_create_nothing(tmp_path):
  target = tmp_path / 'new' / 'deeper' / 'p.json'
  out_lib.check_output_file(str(target), 'json', 3)
  output_paths.check_output_dir(str(tmp_path / 'emb' / 'x'), '--embed_dir')
  assert sorted(os.listdir(tmp_path)) == []
  existing = tmp_path / 'p.json'
  existing.write_text('{"results": []}')
  out_lib.check_output_file(str(existing), 'json', 3)


@pytest.mark.skipif(AS_ROOT, reason='root may write into read-only folders')
def test_unwritable_folder_fails(tmp_path):
  locked = tmp_path / 'locked'
  locked.mkdir()
  locked.chmod(0o500)
  try:
    with pytest.raises(OutputPathError, match='not writable'):
      out_lib.check_output_file(str(locked / 'p.json'), 'json', 3)
    with pytest.raises(OutputPathError, match='not writable'):
      output_paths.check_output_dir(str(locked), '--embed_dir')
  finally:
    locked.chmod(0o700)


def test_embed_dir_that_is_a_file_fails_before_any_work(tmp_path, no_work, monkeypatch):
  monkeypatch.setattr(embed, 'iter_embeddings', no_work)
  blocker = tmp_path / 'emb'
  blocker.write_text('x')
  with pytest.raises(OutputPathError, match='--embed_dir .* is a file, not a folder'):
    dispatch.run('embed', tiny.get_config(), str(tmp_path / 'work'),
                 dispatch.RunOptions(audio=(_song(tmp_path),), embed_dir=str(blocker)))


def test_export_folder_that_is_a_file_fails_before_loading(tmp_path, no_work):
  work = tmp_path / 'work'
  work.mkdir()
  (work / export.EXPORT_DIR).write_text('x')
  with pytest.raises(OutputPathError, match='the export folder .* is a file'):
    export.export_workdir(tiny.get_config(), str(work))


def test_main_prints_one_line_for_a_folder_output_file(tmp_path):
  work = tmp_path / 'work'
  work.mkdir()
  (work / 'config.json').write_text(tiny.get_config().to_json_best_effort())
  folder = tmp_path / 'out'
  folder.mkdir()
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'main.py'), '--workdir', str(work), '--mode',
       'predict', '--output', 'json', '--output_file', str(folder), _song(tmp_path)],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  lines = [l for l in proc.stderr.splitlines() if 'Error' in l]
  assert len(lines) == 1 and 'is a folder' in lines[0], proc.stderr[-2000:]
  assert 'classified' not in proc.stdout + proc.stderr
  assert os.listdir(folder) == []


def test_output_path_errors_are_user_errors():
  assert issubclass(OutputPathError, UserError) and issubclass(OutputPathError, ConfigError)
