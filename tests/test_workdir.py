"""workdir.py: the saved config read back, old configs' missing fields filled once at load."""

from __future__ import annotations

import json

import pytest

from configs import tiny
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.errors import WorkdirError


def _save(path, saved: dict) -> str:
  (path / workdir_lib.CONFIG).write_text(json.dumps(saved))
  return str(path)


def test_a_saved_config_reads_back_with_tuples(tmp_path):
  config = tiny.get_config()
  workdir = _save(tmp_path, json.loads(config.to_json_best_effort()))
  loaded = workdir_lib.load_workdir_config(workdir)
  assert loaded.model.lstm_sizes == tuple(config.model.lstm_sizes)
  assert loaded.task == config.task and loaded.model.name == config.model.name


def test_a_config_saved_before_task_and_model_families_gets_their_old_meaning(tmp_path):
  saved = json.loads(tiny.get_config().to_json_best_effort())
  del saved['task'], saved['model']['name']
  loaded = workdir_lib.load_workdir_config(_save(tmp_path, saved))
  assert loaded.task == 'genre' and loaded.model.name == 'crnn'
  filled = workdir_lib.fill_old_defaults(saved)
  assert filled['task'] == 'genre' and 'task' not in saved  # the caller's dict is left alone


def test_saved_values_win_over_the_old_defaults(tmp_path):
  saved = json.loads(tiny.get_config().to_json_best_effort())
  saved['task'] = 'multilabel'
  assert workdir_lib.load_workdir_config(_save(tmp_path, saved)).task == 'multilabel'


def test_missing_config_says_train_first(tmp_path):
  with pytest.raises(WorkdirError, match='Train first'):
    workdir_lib.load_workdir_config(str(tmp_path))
  assert workdir_lib.config_or_none(str(tmp_path)) is None


def test_missing_dataset_info_is_a_workdir_error(tmp_path):
  with pytest.raises(WorkdirError, match='not a training workdir'):
    workdir_lib.load_genres(str(tmp_path))
