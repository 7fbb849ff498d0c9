"""Walking music folders: symlinked folders followed, each real folder read once.

Libraries assembled from links are common, so a linked folder is read like
any other (``os.walk`` skips them by default, without a word). Following links
can meet a loop (a folder linking to its parent) or the same folder twice;
each real folder is read once, and each repeat is one warning.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from absl import logging


def _never(name: str) -> bool:
  del name
  return False


def walk(top: str, visited: set[str] | None = None,
         skip: Callable[[str], bool] = _never) -> Iterator[tuple[str, list[str]]]:
  """``(folder, sorted file names)`` for ``top`` and every folder below it, links followed.

  Folders come parent first, sub-folders in name order. ``visited`` (real
  paths) may be shared between calls so that several tops read a folder they
  both reach once; ``skip(name)`` drops files and folders by name (hidden ones).
  """
  visited = set() if visited is None else visited
  for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
    real = os.path.realpath(dirpath)
    if real in visited:
      logging.warning('%s is %s again (a symlink loop, or a second link to one folder): '
                      'read once', dirpath, real)
      dirnames[:] = []
      continue
    visited.add(real)
    dirnames[:] = sorted(d for d in dirnames if not skip(d))
    yield dirpath, sorted(f for f in filenames if not skip(f))


def files_under(top: str, keep: Callable[[str], bool]) -> list[str]:
  """The sorted paths of the files below ``top`` whose names ``keep`` accepts, links followed."""
  return sorted(os.path.join(folder, name) for folder, names in walk(top)
                for name in names if keep(name))
