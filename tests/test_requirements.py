"""Every third-party package the project imports is pinned in requirements.txt.

A package that only arrives as a dependency of another (scipy through librosa,
flatbuffers through TensorFlow installed by hand) works on the machine where it
happens to be present and fails on a user's fresh one. This check reads the
imports of the project's code and tests with ``ast`` and maps each to its
distribution with ``importlib.metadata``, so a missing line fails here first.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import sys
from collections.abc import Iterable, Mapping

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHECKED = ('melgenre_jax', 'main.py', 'configs', 'tests')
OWN = {'melgenre_jax', 'configs', 'tests', 'benchmarks', 'conftest', 'main'}
# Needed at run time but never imported by name: jax.export serialization
# (--mode=export) imports flatbuffers inside jax.
RUNTIME_ONLY = {'flatbuffers': 'jax.export serialization (--mode=export)'}
# Scripts that run only in a side environment, never the project's install (each one's
# docstring says how): their imports are not the project's requirements.
SIDE_ENV = {os.path.join('tests', 'fixtures', 'musicnn', 'make_reference.py'):
            'the original TensorFlow musicnn, for the Flax port reference outputs (#31)'}


def _normalize(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()


def requirement_names(path: str) -> set[str]:
  """Normalised distribution names listed in a requirements file."""
  names = set()
  with open(path) as f:
    for line in f:
      line = line.split('#', 1)[0].strip()
      if line and not line.startswith('-'):
        names.add(_normalize(re.split(r'[\s<>=!~;\[]', line, maxsplit=1)[0]))
  return names


def python_files(root: str, entries: Iterable[str]) -> list[str]:
  out = []
  for entry in entries:
    path = os.path.join(root, entry)
    if os.path.isfile(path):
      out.append(path)
    for folder, _, names in os.walk(path):
      out.extend(os.path.join(folder, n) for n in sorted(names) if n.endswith('.py')
                 and os.path.relpath(os.path.join(folder, n), root) not in SIDE_ENV)
  return out


def imported_modules(path: str) -> dict[str, int]:
  """Top-level names of the absolute imports in a file (nested ones included) -> line."""
  with open(path) as f:
    tree = ast.parse(f.read(), filename=path)
  found: dict[str, int] = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      names = [node.module]
    else:
      continue
    for name in names:
      found.setdefault(name.split('.')[0], node.lineno)
  return found


def missing_requirements(files: Iterable[str], required: set[str],
                         distributions: Mapping[str, list[str]]) -> list[str]:
  """One message per third-party import whose distribution is not in ``required``."""
  problems = []
  for path in files:
    for module, line in sorted(imported_modules(path).items()):
      if module in sys.stdlib_module_names or module in OWN or module == '__future__':
        continue
      dists = {_normalize(d) for d in distributions.get(module, [])}
      if not dists & required:
        where = f'{os.path.relpath(path, ROOT)}:{line}'
        provided = ', '.join(sorted(dists)) or 'no installed distribution'
        problems.append(f'{where} imports {module!r} ({provided}), which requirements.txt '
                        'does not list: add it, pinned like the others.')
  return problems


def test_every_import_is_a_listed_requirement():
  required = requirement_names(os.path.join(ROOT, 'requirements.txt'))
  problems = missing_requirements(python_files(ROOT, CHECKED), required,
                                  importlib.metadata.packages_distributions())
  assert not problems, '\n'.join(problems)


def test_side_env_exemptions_name_existing_files():
  for path in SIDE_ENV:
    assert os.path.isfile(os.path.join(ROOT, path)), f'{path} is gone: drop it from SIDE_ENV.'


def test_runtime_only_packages_are_listed():
  required = requirement_names(os.path.join(ROOT, 'requirements.txt'))
  for name, why in RUNTIME_ONLY.items():
    assert _normalize(name) in required, f'requirements.txt must list {name}: {why}.'


def test_the_check_fails_when_a_requirement_line_is_removed(tmp_path):
  lines = open(os.path.join(ROOT, 'requirements.txt')).read().splitlines()
  reduced = tmp_path / 'requirements.txt'
  reduced.write_text('\n'.join(l for l in lines if not l.startswith('soundfile')))
  problems = missing_requirements(python_files(ROOT, CHECKED),
                                  requirement_names(str(reduced)),
                                  importlib.metadata.packages_distributions())
  assert problems and all("'soundfile'" in p for p in problems), problems
  assert any(p.startswith(os.path.join('melgenre_jax', '')) for p in problems)


def test_requirement_names_normalise_and_skip_comments(tmp_path):
  path = tmp_path / 'r.txt'
  path.write_text('# c\nabsl-py==2.5.1  # why\nml_collections>=1\n\n-r other.txt\nScikit-Learn\n')
  assert requirement_names(str(path)) == {'absl-py', 'ml-collections', 'scikit-learn'}
