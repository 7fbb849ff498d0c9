"""Every command line in README.md and docs/*.md is checked (read from the files, so they cannot drift).

A command line is a line of a ```bash block (continuations joined, comments dropped). Each one:
- `python main.py ...` parses through main.py's own flag parsing (the config file loaded, every
  --config.* override applied), then passes the start-up validation (config_checks) with the data
  paths it names standing in for existing ones, since the reader's /data/gtzan is not here;
- `python benchmarks/x.py ...` parses against the flags that script defines (rebuilt from its source,
  so no benchmark's heavy imports are needed), its --config the same way as main.py's;
- `pip install -r F`, `pytest ... PATHS`, `bash SCRIPT`: the files they name exist.
A line no checker knows fails, so a new kind of command gets a check. The lines that read
runs/synthetic (predict, eval, calibrate; embed: README.md's in tests/test_embed.py, docs' here) also
run verbatim, in slow tests, on a tiny run. `[--flag=value]` in a line marks an optional flag
(checked as given); `[WORD]` a placeholder (dropped). The pages' ```python blocks import what they
name, and their relative links reach files and headings that exist.
"""

import ast
import csv
import glob
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from contextlib import redirect_stderr

import numpy as np
import pytest
import soundfile as sf
from absl import flags
from ml_collections import config_flags

import main
from melgenre_jax import config_checks
from melgenre_jax import errors
from melgenre_jax.data import synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ['README.md'] + sorted(os.path.relpath(p, ROOT)
                               for p in glob.glob(os.path.join(ROOT, 'docs', '*.md')))
PREFIX = 'python main.py --workdir runs/synthetic --mode predict'
# Modes whose README/docs lines run verbatim on the tiny run (export: .ci/run runs its line itself).
VERBATIM_MODES = ('predict', 'embed', 'eval', 'calibrate')
# Config fields that name the reader's data: given on a line, an existing stand-in replaces them.
DATA_PATH_FIELDS = {'data.root': 'dir', 'data.manifest': 'file', 'data.split_file': 'file',
                    'data.cache_dir': 'dir'}
NEEDS_CONFIG = ('train', 'cv', 'tune')


def command_lines(page: str) -> list[tuple[str, str]]:
  """(where, line) for every command line of a page's ```bash blocks, continuations joined."""
  out, fence, pending, start = [], None, '', 0
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    for number, raw in enumerate(f, 1):
      line = raw.rstrip('\n')
      if line.startswith('```'):
        fence = None if fence is not None else line[3:].strip()
        continue
      if fence not in ('bash', 'sh', 'shell'):
        continue
      if not pending:
        start = number
      if line.rstrip().endswith('\\'):
        pending += line.rstrip()[:-1] + ' '
        continue
      text = (pending + line).strip()
      pending = ''
      if text and not text.startswith('#'):
        out.append((f'{page}:{start}', text))
  return out


ALL_LINES = [item for page in PAGES for item in command_lines(page)]


def argv_of(text: str) -> list[str]:
  return shlex.split(text, comments=True)


def parts(argv: list[str]) -> list[list[str]]:
  """A line's commands, split at `&&`."""
  out = [[]]
  for a in argv:
    if a == '&&':
      out.append([])
    else:
      out[-1].append(a)
  return [p for p in out if p]


def without_placeholders(argv: list[str]) -> list[str]:
  out = []
  for a in argv:
    if a.startswith('[') and a.endswith(']'):
      if a[1:].startswith('-'):
        out.append(a[1:-1])
    else:
      out.append(a)
  return out


def readme_predict_commands() -> list[str]:
  """Predict lines of README.md and docs/ (text without its comment)."""
  return list(dict.fromkeys(shlex.join(argv_of(t)) for _, t in ALL_LINES if t.startswith(PREFIX)))


def verbatim_commands() -> list[str]:
  """The embed, eval and calibrate lines (README.md's embed lines: tests/test_embed.py runs them)."""
  prefix = 'python main.py --workdir runs/synthetic --mode '
  readme_embed = {t for where, t in ALL_LINES
                  if where.startswith('README.md:') and t.startswith(prefix + 'embed')}
  return list(dict.fromkeys(shlex.join(argv_of(t)) for _, t in ALL_LINES
                            if t.startswith(prefix) and t not in readme_embed
                            and t[len(prefix):].split()[0] in VERBATIM_MODES[1:]))


# ---- parsing checks ----------------------------------------------------------------------------

def _stand_ins(config, overridden: set[str], tmp_path) -> None:
  """Data paths the line names are the reader's: point them at something that exists here."""
  for field, kind in DATA_PATH_FIELDS.items():
    if field not in overridden:
      continue
    section, name = field.split('.')
    path = tmp_path / f'stand_in_{name}'
    if kind == 'dir':
      path.mkdir(exist_ok=True)
    else:
      path.write_text('path,label\n')
    config[section][name] = str(path)


def _overrides(argv: list[str], flag: str = 'config') -> set[str]:
  return {a.split('=', 1)[0].split('.', 1)[1] for a in argv if a.startswith(f'--{flag}.')}


def _validate_config(config, argv: list[str], mode: str, tmp_path) -> None:
  if config is None:
    return
  config.unlock()
  _stand_ins(config, _overrides(argv), tmp_path)
  try:
    config_checks.validate(config)
    if mode == 'cv':
      config_checks.check_cv(config)
  except errors.UserError as e:
    raise AssertionError(f'{shlex.join(argv)}: {type(e).__name__}: {e}') from None


def _reset_main_flags(argv: list[str]) -> None:
  """main.py's flags unparsed, its config-override flags (defined per parse) gone."""
  for name in list(flags.FLAGS):
    if name.startswith('config.'):
      delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  sys.argv = list(argv)  # ml_collections finds the --config.* overrides in sys.argv


def check_main(argv: list[str], tmp_path) -> None:
  saved = list(sys.argv)
  err = io.StringIO()
  try:
    _reset_main_flags(argv)
    with redirect_stderr(err):
      rest = main.parse_flags(argv)
      config = main.loaded_config()
    mode = flags.FLAGS.mode
    assert not rest[1:] or mode in ('predict', 'embed'), f'paths {rest[1:]} with --mode={mode}'
    assert config is not None or mode not in NEEDS_CONFIG, f'--mode={mode} needs --config'
    main.run_options(rest[1:])
    _validate_config(config, argv, mode, tmp_path)
  except SystemExit as e:
    raise AssertionError(f'{shlex.join(argv)}: {e} {err.getvalue()[-2000:]}') from None
  finally:
    _reset_main_flags(saved)


def _literal(node):
  try:
    return ast.literal_eval(node)
  except ValueError:
    return None


def script_flags(script: str, argv: list[str]) -> flags.FlagValues:
  """A fresh FlagValues with the flags ``script`` defines (name, kind, literal enum choices)."""
  with open(script, encoding='utf-8') as f:
    tree = ast.parse(f.read())
  fv = flags.FlagValues()
  for node in ast.walk(tree):
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr.startswith('DEFINE_') and node.args
            and isinstance(node.args[0], ast.Constant)):
      continue
    kind, name = node.func.attr, node.args[0].value
    if kind == 'DEFINE_config_file':
      config_flags.DEFINE_config_file(name, None, flag_values=fv, sys_argv=list(argv))
    elif kind == 'DEFINE_enum' and len(node.args) > 2 and _literal(node.args[2]):
      flags.DEFINE_enum(name, None, list(_literal(node.args[2])), '', flag_values=fv)
    elif kind in ('DEFINE_integer', 'DEFINE_float', 'DEFINE_bool', 'DEFINE_boolean',
                  'DEFINE_list', 'DEFINE_multi_string', 'DEFINE_string'):
      getattr(flags, kind)(name, None, '', flag_values=fv)
    else:
      flags.DEFINE_string(name, None, '', flag_values=fv)
  return fv


def check_script(argv: list[str], tmp_path) -> None:
  script = os.path.join(ROOT, argv[1])
  assert os.path.isfile(script), f'{argv[1]}: no such script'
  fv = script_flags(script, argv[1:])
  try:
    fv(argv[1:])
  except flags.Error as e:
    raise AssertionError(f'{shlex.join(argv)}: {e}') from None
  if 'config' in fv:
    _validate_config(fv.config, argv, 'cv', tmp_path)


def check_part(argv: list[str], tmp_path) -> None:
  argv = without_placeholders(argv)
  if argv[:5] == ['python', '-m', 'pip', 'install', '-r']:
    assert os.path.isfile(os.path.join(ROOT, argv[5])), argv
  elif argv[:3] == ['python', '-m', 'pytest']:
    skip_next = False
    for a in argv[3:]:
      if skip_next:
        skip_next = False
      elif a in ('-m', '-k'):
        skip_next = True
      elif not a.startswith('-'):
        assert os.path.exists(os.path.join(ROOT, a.split('::')[0])), a
  elif argv[:2] == ['python', 'main.py']:
    check_main(argv[1:], tmp_path)
  elif argv[0] == 'python' and argv[1].endswith('.py'):
    check_script(argv, tmp_path)
  elif argv[0] == 'bash':
    assert os.path.isfile(os.path.join(ROOT, argv[1])), argv
  else:
    raise AssertionError(f'no check for this command: {shlex.join(argv)}; add one to '
                         'tests/test_readme_commands.py')


def test_pages_have_the_commands_ci_reads():
  """.ci/run greps README.md for these two; the code map's pages all exist."""
  readme = [t for where, t in ALL_LINES if where.startswith('README.md:')]
  assert any(t.startswith('python -m pip install -r requirements.txt && python main.py ')
             for t in readme)
  assert any(t.startswith('python -m pip install -r requirements.txt && python -m pytest ')
             for t in readme)
  assert len(PAGES) > 1 and len(ALL_LINES) > 20, PAGES


def test_readme_names_every_mode():
  """The README's list of modes is dispatch.MODES (a new mode gets its line there)."""
  from melgenre_jax.modes import dispatch  # pylint: disable=g-import-not-at-top
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    line = next(p for p in f.read().split('\n\n') if p.startswith('`--mode` is one of'))
  assert set(re.findall(r'`(\w+)`', line)) - {'train'} >= set(dispatch.MODES) - {'train'}, line


def test_readme_code_map_names_every_module():
  """Every module of the package (two levels deep) and every deeper folder is in the README's code map."""
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    layout = f.read().split('## Layout', 1)[1]
  names = set(re.findall(r'[A-Za-z_]\w*', layout))
  package = os.path.join(ROOT, 'melgenre_jax')
  missing = []
  for path in glob.glob(os.path.join(package, '**', '*.py'), recursive=True):
    parts_ = os.path.relpath(path, package).split(os.sep)
    name = parts_[-1][:-3] if len(parts_) <= 2 else parts_[1]
    if name != '__init__' and name not in names:
      missing.append(os.path.relpath(path, ROOT))
  assert not missing, f'add these to the code map in README.md ("## Layout"): {sorted(missing)}'


def test_readme_is_short():
  with open(os.path.join(ROOT, 'README.md'), encoding='utf-8') as f:
    assert len(f.readlines()) <= 300


@pytest.mark.parametrize('where,text', ALL_LINES, ids=[w for w, _ in ALL_LINES])
def test_command_line_parses(where, text, tmp_path):
  del where
  for part in parts(argv_of(text)):
    check_part(part, tmp_path)


@pytest.mark.parametrize('text', [
    'python main.py --workdir runs/x --mode predic',
    'python main.py --config configs/tiny.py --workdir runs/x --config.nope=3',
    'python main.py --config configs/tiny.py --workdir runs/x --config.batch_size=abc',
    'python main.py --config configs/nope.py --workdir runs/x',
    'python main.py --config configs/tiny.py --workdir runs/x --mode eval song.mp3',
    'python main.py --workdir runs/x --mode cv',
    'python main.py --config configs/gtzan.py --workdir runs/x',  # no data root
    'python main.py --config configs/tiny.py --workdir runs/x --config.model.dropout=1.5',
    'python benchmarks/bench_transfer.py --source=nope',
    'python benchmarks/bench_baselines.py --config.data.nope=1',
    'python benchmarks/nope.py',
    'python -m pip install -r nope.txt',
    'tensorboard --logdir runs',
])
def test_a_wrong_command_line_fails_its_check(text, tmp_path):
  with pytest.raises(AssertionError):
    for part in parts(argv_of(text)):
      check_part(part, tmp_path)


def _fenced(page: str, language: str) -> list[str]:
  """The lines of a page's code blocks in ``language``."""
  out, fence = [], None
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    for line in f:
      if line.startswith('```'):
        fence = None if fence is not None else line[3:].strip()
      elif fence == language:
        out.append(line.strip())
  return out


@pytest.mark.parametrize('page', PAGES)
def test_python_snippets_import_what_they_name(page):
  """A ```python block's package imports name things that exist."""
  for line in _fenced(page, 'python'):
    if line.startswith('from melgenre_jax') or line.startswith('import melgenre_jax'):
      exec(line.split('#')[0], {})  # pylint: disable=exec-used


def _slug(heading: str) -> str:
  """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
  text = re.sub(r'[^\w\- ]', '', heading.strip().lower())
  return text.replace(' ', '-')


@pytest.mark.parametrize('page', PAGES + ['benchmarks/README.md'])
def test_relative_links_resolve(page):
  """Links between README.md, docs/ and benchmarks/README.md point at files and headings that exist."""
  with open(os.path.join(ROOT, page), encoding='utf-8') as f:
    text = f.read()
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+://', target):
      continue
    path, _, anchor = target.partition('#')
    file = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else (
        os.path.join(ROOT, page))
    assert os.path.exists(file), f'{page}: {target}: no such file'
    if anchor:
      with open(file, encoding='utf-8') as f:
        slugs = {_slug(line.lstrip('#')) for line in f if line.startswith('#')}
      assert anchor in slugs, f'{page}: {target}: no such heading'


# ---- verbatim runs ------------------------------------------------------------------------------

# Flags of main.py that take the next argument as their value (the rest name audio).
_VALUE_FLAGS = ('--workdir', '--mode', '--output', '--output_file', '--top_k', '--step',
                '--offset_seconds', '--max_seconds', '--hop_seconds', '--min_confidence',
                '--embed_dir')


def _song(path: str, genre: str, sample_rate: int = 22050, seconds: float = 3.0) -> None:
  wave = synthetic.synthesize_song(f'synthetic/{genre}/0100', sample_rate, seconds)
  sf.write(path, np.asarray(wave, np.float32), sample_rate)


def _named_inputs(args: list[str]) -> list[str]:
  """The audio a command line names (positional paths and --audio values)."""
  out, skip = [], False
  for a in args:
    if skip:
      skip = False
    elif a in _VALUE_FLAGS:
      skip = True
    elif a == '--audio':
      continue
    elif not a.startswith('-'):
      out.append(a)
  return out


def _run_in_folder(command: str, tiny_run, tmp_path) -> subprocess.CompletedProcess:
  """The line in a folder holding the files it names, with the tiny run as runs/synthetic."""
  os.makedirs(tmp_path / 'runs')
  shutil.copytree(tiny_run, tmp_path / 'runs' / 'synthetic')
  os.makedirs(tmp_path / 'my_folder' / 'sub')
  _song(str(tmp_path / 'my_folder' / 'a.wav'), 'blues')
  _song(str(tmp_path / 'my_folder' / 'sub' / 'b.flac'), 'classical', 16000)
  _song(str(tmp_path / 'song.mp3'), 'ambient', 44100, seconds=40.0)  # an excerpt from 0:30
  _song(str(tmp_path / 'other.flac'), 'disco')
  _song(str(tmp_path / 'third.flac'), 'blues')
  argv = shlex.split(command)
  assert argv[:2] == ['python', 'main.py']
  argv = [sys.executable, os.path.join(ROOT, 'main.py')] + argv[2:]
  return subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                        check=False)


def test_readme_has_predict_examples_with_positional_paths_and_globs():
  commands = readme_predict_commands()
  assert len(commands) >= 3, commands
  assert any(not shlex.split(c)[len(shlex.split(PREFIX)):][0].startswith('--') for c in commands)
  assert any('*' in c for c in commands)


@pytest.mark.slow
@pytest.mark.parametrize('command', readme_predict_commands())
def test_readme_predict_command_runs_verbatim(command, tiny_run, tmp_path):
  proc = _run_in_folder(command, tiny_run, tmp_path)
  argv = shlex.split(command)
  out = proc.stdout + proc.stderr
  assert proc.returncode == 0, out[-3000:]
  assert 'SKIPPED' not in proc.stdout, proc.stdout
  predictions = tmp_path / 'runs' / 'synthetic' / 'predictions'
  named = _named_inputs(argv[2:])
  if '--output json' in command:
    assert os.path.exists(predictions / 'predictions.json')
  elif '--output csv' in command:
    with open(predictions / 'predictions.csv', newline='') as f:
      rows = list(csv.DictReader(f))
    assert len(rows) >= len(named) and all(r['status'] != 'skipped' for r in rows), rows
  else:
    classified = proc.stdout.count(' segment')
    assert classified >= len(named), (named, proc.stdout)
  if '--write_tags' in command:
    assert 'Genre tags' in proc.stdout, proc.stdout
  if '--plot' in command:
    assert any(n.endswith('_timeline.png') for n in
               os.listdir(tmp_path / 'runs' / 'synthetic' / 'predictions'))


@pytest.mark.slow
@pytest.mark.parametrize('command', verbatim_commands())
def test_docs_workdir_command_runs_verbatim(command, tiny_run, tmp_path):
  """embed, eval and calibrate lines leave what the docs say they leave."""
  proc = _run_in_folder(command, tiny_run, tmp_path)
  assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
  run = tmp_path / 'runs' / 'synthetic'
  mode = shlex.split(command)[5]
  expected = {'embed': 'embeddings/embeddings.npy', 'eval': 'eval/report.json',
              'calibrate': 'calibration.json'}[mode]
  assert os.path.exists(run / expected), os.listdir(run)
  if '--per_segment' in command:
    assert os.path.exists(run / 'embeddings' / 'segment_embeddings.npy')


def test_audio_flag_values_split_at_commas_unless_the_file_exists(tmp_path):
  from melgenre_jax.modes import dispatch  # pylint: disable=g-import-not-at-top
  comma = tmp_path / 'Artist, The - Song.wav'
  comma.write_bytes(b'')
  assert dispatch.audio_paths(['a.mp3,b.flac', str(comma)], ['c/']) == [
      'a.mp3', 'b.flac', str(comma), 'c/']


def test_expand_paths_expands_a_quoted_wildcard(tmp_path):
  from melgenre_jax.modes import predict  # pylint: disable=g-import-not-at-top
  for name in ('x.flac', 'y.flac', 'z.wav'):
    (tmp_path / name).write_bytes(b'')
  pattern = str(tmp_path / '*.flac')
  assert [p for p, _ in predict.expand_paths([pattern])] == [
      str(tmp_path / 'x.flac'), str(tmp_path / 'y.flac')]
  assert predict.expand_paths([str(tmp_path / '*.ogg')]) == [
      (str(tmp_path / '*.ogg'), 'file not found')]


@pytest.mark.slow
def test_positional_paths_outside_predict_are_refused():
  proc = subprocess.run([sys.executable, os.path.join(ROOT, 'main.py'), '--workdir', '/tmp/x',
                         '--mode', 'eval', 'song.mp3'], capture_output=True, text=True,
                        timeout=120, check=False)
  assert proc.returncode != 0 and 'only --mode=predict takes audio paths' in proc.stderr
