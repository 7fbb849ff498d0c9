"""Files derived from the history come back when deleted (#34 item 5).

metrics.json, metrics.csv and the training curves are written from the run's
history, which every checkpoint holds: a rerun of a finished run (or eval,
through ``inference.rebuild_history_files``) writes the missing ones again.
"""

from __future__ import annotations

import os
import shutil

import pytest

from configs import tiny
from melgenre_jax import inference
from melgenre_jax import reporting
from melgenre_jax import train
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.modes import evaluate


def _contents(workdir: str) -> dict[str, bytes]:
  out = {}
  for name in (workdir_lib.METRICS_JSON, workdir_lib.METRICS_CSV):
    with open(workdir_lib.path(workdir, name), 'rb') as f:
      out[name] = f.read()
  return out


def _delete(workdir: str) -> None:
  for name in reporting.HISTORY_FILES:
    os.remove(workdir_lib.path(workdir, name))


@pytest.fixture
def run_copy(tiny_run_dir, tmp_path):
  return shutil.copytree(tiny_run_dir, str(tmp_path / 'run'))


def test_rerun_of_a_finished_run_rebuilds_the_deleted_files(run_copy, caplog):
  before = _contents(run_copy)
  _delete(run_copy)
  train.train_and_evaluate(tiny.get_config(), run_copy)
  assert _contents(run_copy) == before  # byte for byte
  assert os.path.getsize(workdir_lib.path(run_copy, workdir_lib.TRAINING_CURVES_PLOT)) > 0
  said = [r.getMessage() for r in caplog.records if 'rebuilt from the history' in r.getMessage()]
  assert len(said) == 1 and 'metrics.json' in said[0] and 'checkpoint at step' in said[0], said


def test_eval_side_rebuild_reads_the_newest_checkpoint(run_copy, caplog):
  before = _contents(run_copy)
  os.remove(workdir_lib.path(run_copy, workdir_lib.METRICS_JSON))
  assert inference.rebuild_history_files(run_copy) == [workdir_lib.METRICS_JSON]
  assert _contents(run_copy) == before
  assert any('metrics.json missing from' in r.getMessage() for r in caplog.records)
  # Nothing missing: nothing written, nothing said.
  caplog.clear()
  assert inference.rebuild_history_files(run_copy) == []
  assert not any('rebuilt' in r.getMessage() for r in caplog.records)


def test_eval_rebuilds_the_deleted_files(run_copy):
  before = _contents(run_copy)
  _delete(run_copy)
  evaluate.evaluate_workdir(workdir_lib.load_workdir_config(run_copy), run_copy)
  assert _contents(run_copy) == before
  assert os.path.getsize(workdir_lib.path(run_copy, workdir_lib.TRAINING_CURVES_PLOT)) > 0


def test_unreadable_history_is_a_warning_not_a_failure(run_copy, caplog):
  _delete(run_copy)
  for step in os.listdir(workdir_lib.checkpoint_dir(run_copy)):
    shutil.rmtree(os.path.join(workdir_lib.checkpoint_dir(run_copy), step, 'progress'),
                  ignore_errors=True)
  assert inference.rebuild_history_files(run_copy) == []
  assert any('not rebuilt' in r.getMessage() for r in caplog.records)


def test_nothing_is_written_without_history(tmp_path):
  assert reporting.rebuild_missing_history_files(str(tmp_path), [], 'nowhere') == []
  assert os.listdir(tmp_path) == []
