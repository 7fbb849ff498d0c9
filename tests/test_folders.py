"""data/folders.py: linked music folders are read, a link loop ends with a warning (#34 item 5)."""

from __future__ import annotations

import os

from melgenre_jax.data import audio
from melgenre_jax.data import folders


def _touch(path) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'wb') as f:
    f.write(b'x')


def test_linked_folder_is_followed_and_a_loop_read_once(tmp_path, caplog):
  top = tmp_path / 'music'
  _touch(top / 'a.wav')
  _touch(top / 'notes.txt')
  _touch(tmp_path / 'elsewhere' / 'live' / 'gig.flac')
  os.symlink(tmp_path / 'elsewhere' / 'live', top / 'live')  # a linked folder
  os.symlink(top, top / 'loop')  # a folder linking to its parent
  found = folders.files_under(str(top), audio.has_supported_extension)
  assert found == [str(top / 'a.wav'), str(top / 'live' / 'gig.flac')]
  said = [r.getMessage() for r in caplog.records if 'symlink loop' in r.getMessage()]
  assert len(said) == 1 and str(top / 'loop') in said[0], said


def test_two_tops_sharing_visited_read_a_folder_once(tmp_path, caplog):
  shared = tmp_path / 'shared'
  _touch(shared / 's.wav')
  for name in ('x', 'y'):
    os.makedirs(tmp_path / name)
    os.symlink(shared, tmp_path / name / 'shared')
  visited: set[str] = set()
  names = [n for top in ('x', 'y')
           for _, files in folders.walk(str(tmp_path / top), visited) for n in files]
  assert names == ['s.wav']
  assert sum('read once' in r.getMessage() for r in caplog.records) == 1


def test_skip_drops_names(tmp_path):
  _touch(tmp_path / '.hidden' / 'h.wav')
  _touch(tmp_path / '.h.wav')
  _touch(tmp_path / 'v.wav')
  walked = list(folders.walk(str(tmp_path), skip=lambda n: n.startswith('.')))
  assert walked == [(str(tmp_path), ['v.wav'])]
