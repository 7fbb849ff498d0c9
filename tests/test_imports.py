"""The package's shape, read from its source with ast: imports run one way, modules stay small.

The import graph counts every import, those made inside functions included
(an import moved into a function to dodge a cycle is still a cycle), with
relative imports and ``from x import y`` resolved to the module they load.
"""

from __future__ import annotations

import ast
import glob
import os

PACKAGE = 'melgenre_jax'
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(ROOT, PACKAGE)
MAX_TOP_LEVEL_MODULES = 13
MAX_LINES = 450


def package_modules() -> dict[str, str]:
  """Dotted module name -> file, for every .py file of the package."""
  modules = {}
  for path in glob.glob(os.path.join(PACKAGE_DIR, '**', '*.py'), recursive=True):
    name = os.path.relpath(path, ROOT)[:-len('.py')].replace(os.sep, '.')
    modules[name.removesuffix('.__init__')] = path
  return modules


def _resolve(name: str, modules: dict[str, str]) -> str | None:
  """The package module that importing ``name`` loads (its longest known prefix)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name or None


def imports_of(module: str, path: str, modules: dict[str, str]) -> set[str]:
  """The package modules ``module`` imports, anywhere in its file."""
  with open(path, encoding='utf-8') as f:
    tree = ast.parse(f.read(), path)
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(_resolve(a.name, modules) for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      if node.level:  # relative: from the package, one level up per extra dot
        base = package.split('.')[:len(package.split('.')) - (node.level - 1)]
        source = '.'.join(base + ([node.module] if node.module else []))
      else:
        source = node.module or ''
      for alias in node.names:  # `from pkg import module` loads pkg.module
        full = f'{source}.{alias.name}'
        found.add(full if full in modules else _resolve(source, modules))
  found.discard(None)
  found.discard(module)
  return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + '.')}


def import_graph() -> dict[str, set[str]]:
  modules = package_modules()
  return {m: imports_of(m, p, modules) for m, p in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan), plus self-loops."""
  index, low, stack, on_stack, cycles = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in sorted(graph.get(v, ())):
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        cycles.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return cycles


def is_core(module: str) -> bool:
  """Everything but the modes (main.py, the entry point, is outside the package)."""
  return not (module == f'{PACKAGE}.modes' or module.startswith(f'{PACKAGE}.modes.'))


def test_graph_finds_function_level_and_relative_imports(tmp_path):
  pkg = tmp_path / 'melgenre_jax'
  (pkg / 'sub').mkdir(parents=True)
  (pkg / '__init__.py').write_text('')
  (pkg / 'sub' / '__init__.py').write_text('')
  (pkg / 'a.py').write_text('def f():\n  from melgenre_jax.sub import b\n')
  (pkg / 'sub' / 'b.py').write_text('from .. import a\nfrom . import c\n')
  (pkg / 'sub' / 'c.py').write_text('import os\n')
  modules = {'melgenre_jax': str(pkg / '__init__.py'), 'melgenre_jax.a': str(pkg / 'a.py'),
             'melgenre_jax.sub': str(pkg / 'sub' / '__init__.py'),
             'melgenre_jax.sub.b': str(pkg / 'sub' / 'b.py'),
             'melgenre_jax.sub.c': str(pkg / 'sub' / 'c.py')}
  graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
  assert graph['melgenre_jax.a'] == {'melgenre_jax.sub.b'}
  assert graph['melgenre_jax.sub.b'] == {'melgenre_jax.a', 'melgenre_jax.sub.c'}
  assert find_cycles(graph) == [['melgenre_jax.a', 'melgenre_jax.sub.b']]


def test_no_import_cycles():
  cycles = find_cycles(import_graph())
  assert not cycles, 'import cycles (function-level imports included):\n' + '\n'.join(
      ' <-> '.join(c) for c in cycles)


def test_core_modules_import_neither_modes_nor_the_entry_point():
  graph = import_graph()
  upward = sorted(f'{m} -> {w}' for m, targets in graph.items() if is_core(m)
                  for w in targets if not is_core(w))
  assert not upward, 'core modules importing modes/:\n' + '\n'.join(upward)
  # Nothing in the package imports the entry point (or the old cli module).
  for m, path in package_modules().items():
    with open(path, encoding='utf-8') as f:
      tree = ast.parse(f.read(), path)
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module or '' for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not names & {'main', 'cli', f'{PACKAGE}.cli'}, f'{m} imports the entry point'


def test_at_most_13_top_level_modules():
  top = sorted(os.path.basename(p) for p in glob.glob(os.path.join(PACKAGE_DIR, '*.py')))
  assert len(top) <= MAX_TOP_LEVEL_MODULES, (
      f'{len(top)} top-level modules (at most {MAX_TOP_LEVEL_MODULES}): {top}')


def test_no_module_over_450_lines():
  long = {}
  for path in glob.glob(os.path.join(PACKAGE_DIR, '**', '*.py'), recursive=True):
    with open(path, encoding='utf-8') as f:
      lines = sum(1 for _ in f)
    if lines > MAX_LINES:
      long[os.path.relpath(path, ROOT)] = lines
  assert not long, f'modules over {MAX_LINES} lines: {long}'
