"""Output paths checked before any work: a folder, a file, each writable.

A mode that writes where the user says (predict's ``--output_file``, embed's
``--embed_dir``) or into the workdir (export) calls these first, so a path
that cannot be written is one line before any audio is decoded, not a crash
after the whole library was classified (which left the answers in a stray
``.tmp``). They create nothing: the nearest existing folder above a path
that does not exist yet must be a writable folder.
"""

from __future__ import annotations

import os

from melgenre_jax.errors import OutputPathError


def _nearest_existing(path: str) -> str:
  """``path`` or its nearest existing ancestor."""
  path = os.path.abspath(path)
  while not os.path.lexists(path):
    parent = os.path.dirname(path)
    if parent == path:
      break
    path = parent
  return path


def _check_creatable(path: str, flag: str) -> None:
  """The folders above ``path`` exist or can be made, and allow writing."""
  above = _nearest_existing(os.path.dirname(os.path.abspath(path)))
  if not os.path.isdir(above):
    raise OutputPathError(f'{flag} {path}: {above} is a file, not a folder; choose another '
                          f'{flag}.')
  if not os.access(above, os.W_OK | os.X_OK):
    raise OutputPathError(f'{flag} {path}: the folder {above} is not writable (permission '
                          f'denied); choose another {flag}.')


def check_output_file(path: str, flag: str) -> None:
  """``path`` can be written as a file: not a folder, its folder writable.

  ``flag``: how the message names the path (``--output_file``).

  Raises:
    OutputPathError: with the fix.
  """
  path = os.path.abspath(path)
  if os.path.isdir(path):
    raise OutputPathError(f'{flag} {path} is a folder; give a file name inside it (e.g. '
                          f'{os.path.join(path, "predictions.json")}).')
  if os.path.lexists(path) and not os.path.isfile(path):
    raise OutputPathError(f'{flag} {path} is not a regular file; choose another {flag}.')
  if os.path.exists(path) and not os.access(path, os.W_OK):
    raise OutputPathError(f'{flag} {path} is not writable (permission denied); choose '
                          f'another {flag}.')
  _check_creatable(path, flag)


def check_output_dir(path: str, flag: str) -> None:
  """``path`` can hold the mode's files: a writable folder, or one that can be made.

  Raises:
    OutputPathError: with the fix.
  """
  path = os.path.abspath(path)
  if os.path.lexists(path) and not os.path.isdir(path):
    raise OutputPathError(f'{flag} {path} is a file, not a folder; choose another {flag}.')
  if os.path.isdir(path):
    if not os.access(path, os.W_OK | os.X_OK):
      raise OutputPathError(f'{flag} {path} is not writable (permission denied); choose '
                            f'another {flag}.')
    return
  _check_creatable(path, flag)
