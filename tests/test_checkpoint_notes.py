"""Opening checkpoints read-only (eval, predict, ...) prints no "directory is read only" note."""

import logging

from melgenre_jax import checkpointing


def test_a_read_only_manager_says_nothing_about_being_read_only(tmp_path, caplog):
  (tmp_path / 'checkpoints').mkdir()
  with caplog.at_level(logging.INFO):
    manager = checkpointing.create_manager(str(tmp_path), read_only=True)
    manager.close()
  messages = [r.getMessage() for r in caplog.records]
  assert messages, 'Orbax logs its other lines as before'
  assert not [m for m in messages if 'read only' in m], messages
