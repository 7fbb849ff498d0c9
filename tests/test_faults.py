"""Faults at any moment: SIGKILL a small run at random moments over its whole life.

The same command is started again after every kill (and may itself be killed
at the next drawn moment); after K kills it is left to finish. The result must
be the uninterrupted run's: the same final parameters and optimizer state, the
same metrics history and report files, and nothing temporary or stale left in
the workdir.

Kill moments (K = NUM_KILLS), drawn with a seeded RNG (``MELGENRE_FAULT_SEED``
replays a sequence; the failure message lists the seed and every kill: its aim,
when it was sent and the phase it landed in):

- uniform: at a uniform fraction of the run's expected life, measured on an
  uninterrupted run (a rerun's set-up, plus the time of the steps not yet
  checkpointed);
- aimed at phases too short for a uniform draw: the cache build (the moment
  its temporary folder appears), a checkpoint write (the moment Orbax's
  temporary folder appears), the last epoch's reports (its log line, plus a
  random delay);
- aimed at single file writes, which last microseconds: the run SIGKILLs
  itself (``_HOOK``) just after it opens a workdir file for writing (created
  or truncated, nothing in it yet) or just before it renames one into place,
  at a write drawn from those the uninterrupted run made.

Any kill but the last two is sent at the latest a moment after the last
epoch's log line (a run let go further would finish before the plan does); a
kill that could not land (the run ended first) is replaced by another draw.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import glob
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from melgenre_jax.runtime import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 3 epochs of 4 steps on the tiny set, a checkpoint and validation every epoch;
# a short sleep after each step gives the steps a fair share of the run's time.
OVERRIDES = ['--config.num_epochs=3', '--config.schedule.stage_ends=(1,3,)',
             '--config.checkpoint.max_to_keep=5', '--config.debug.step_delay_seconds=0.1']
NUM_KILLS = 12
LAST_STEP = 12
LAST_EPOCH_LINE = f'epoch 3 step {LAST_STEP}:'  # logged when the last epoch's reports begin
SEED = int(os.environ.get('MELGENRE_FAULT_SEED', '20261201'))
# Fields that measure wall-clock time: they differ between any two runs.
CLOCK_FIELDS = ('epoch_seconds',)

pytestmark = pytest.mark.slow

# Runs main.py after hooking the ways Python code writes files (open for
# writing, os.replace, os.rename): each write into FAULT_WORKDIR is appended to
# FAULT_WRITE_LOG as 'what pattern' (the path relative to the workdir, numbers
# as #, random hex as *), and the first one whose line equals FAULT_KILL_AT
# SIGKILLs the process: after the open (the file exists, empty) or before the
# rename (the temporary file is complete, not in place). Writes by C++
# (tensorstore's checkpoint data) are not seen.
_HOOK = r"""
import builtins, os, re, runpy, signal, sys
_ROOT = os.path.abspath(os.environ['FAULT_WORKDIR']) + os.sep
_KILL_AT = os.environ.get('FAULT_KILL_AT', '')
_LOG = os.environ['FAULT_WRITE_LOG']

def _seen(what, path):
  path = os.path.abspath(os.fsdecode(path))
  if not path.startswith(_ROOT):
    return
  pattern = re.sub(r'[0-9a-f]{6,}', '*', path[len(_ROOT):])
  line = f'{what} {re.sub(r"[0-9]+", "#", pattern)}'
  fd = os.open(_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
  os.write(fd, (line + '\n').encode())
  os.close(fd)
  if line == _KILL_AT:
    os.kill(os.getpid(), signal.SIGKILL)

_open = builtins.open
def _open_hook(file, mode='r', *args, **kwargs):
  f = _open(file, mode, *args, **kwargs)
  if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in 'wax+'):
    _seen('open', file)
  return f
builtins.open = _open_hook

def _hook(name):
  real = getattr(os, name)
  def renamed(src, dst, *args, **kwargs):
    _seen(name, dst)
    return real(src, dst, *args, **kwargs)
  setattr(os, name, renamed)
_hook('replace')
_hook('rename')
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name='__main__')
"""


class _Run:
  """One ``main.py`` process whose output lines are recorded with their times."""

  def __init__(self, workdir: str, kill_at_write: str = ''):
    self.stale = set(_cache_tmp(workdir) + _ckpt_tmp(workdir))  # left by earlier kills
    cmd = [sys.executable, '-c', _HOOK, os.path.join(ROOT, 'main.py'), '--config',
           os.path.join(ROOT, 'configs', 'tiny.py'), '--workdir', workdir, *OVERRIDES]
    self.write_log = f'{workdir}.writes-{time.monotonic_ns()}'
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'FAULT_WORKDIR': workdir,
           'FAULT_KILL_AT': kill_at_write, 'FAULT_WRITE_LOG': self.write_log}
    self.t0 = time.monotonic()
    self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
    self.lines: list[tuple[float, str]] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      self.lines.append((self.elapsed(), line.rstrip('\n')))

  def elapsed(self) -> float:
    return time.monotonic() - self.t0

  def seen(self, text: str) -> bool:
    return any(text in line for _, line in list(self.lines))

  def writes(self) -> list[str]:
    if not os.path.exists(self.write_log):
      return []
    with open(self.write_log) as f:
      return f.read().splitlines()

  def output(self, last: int = 4000) -> str:
    self._reader.join(timeout=10)
    return '\n'.join(line for _, line in self.lines)[-last:]

  def finish(self, timeout: float = 300) -> int:
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise


# ----------------------------------------------------------------------------
# Where a run is: temporary folders on disk, else its last log line.


def _cache_tmp(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, 'cache', '.tmp-*'))


def _ckpt_tmp(workdir: str) -> list[str]:
  return glob.glob(os.path.join(workdir, 'checkpoints', '*orbax-checkpoint-tmp*'))


_PHASES_BY_LINE = (  # per line, the first marker found names the phase
    ('Done (train)', 'exit'),
    ('Resumed from checkpoint', 'set-up after restore'),
    ('] epoch ', 'epoch end (validation, reports, checkpoint) or the next steps'),
    (' train / ', 'compile or first steps'),
    ('data: ', 'set-up (split, state, restore)'),
    ('building cache', 'cache build'),
    ('glibc malloc', 'start-up'),
)


def _new(run: _Run, paths: list[str]) -> bool:
  return bool(set(paths) - run.stale)


def _phase(run: _Run, workdir: str) -> str:
  """The phase a run is in, for the failure message (a best guess from outside)."""
  if _new(run, _cache_tmp(workdir)):
    return 'cache build (temporary folder present)'
  if _new(run, _ckpt_tmp(workdir)):
    return 'checkpoint write (temporary folder present)'
  for _, line in reversed(list(run.lines)):
    for marker, name in _PHASES_BY_LINE:
      if marker in line:
        return f'{name} [after: {line.split("] ", 1)[-1][:50]}]'
  return 'start-up (imports)'


# ----------------------------------------------------------------------------
# The kill plan.


@dataclasses.dataclass
class _Kill:
  """One kill: 'uniform' at a fraction of the run's expected life, else aimed at a phase.

  Any kill but the last two is sent at the latest ``cap`` seconds after the
  last epoch's log line: a run let go further would finish before the plan.
  """
  # 'uniform', 'cache', 'checkpoint' (one before the last), 'last checkpoint',
  # 'reports' or 'write <what> <pattern>'
  aim: str
  draw: float  # uniform: fraction of the expected life; aimed: seconds after the trigger
  cap: float | None = None  # None: not capped
  at: float = 0.0  # seconds after launch when it was sent
  landed: str = ''  # the phase it hit, or why it was not sent

  def __str__(self):
    return f'{self.aim} (draw {self.draw:.3f}) at {self.at:.2f}s -> {self.landed}'


def _plan(rng: random.Random, writes: list[str]) -> list[_Kill]:
  """The cache build first (only a run without a complete cache builds one):
  one of its file writes, then the moment its folder appears; then uniform
  draws, file writes and a checkpoint write, shuffled; last the kills that may
  leave the run finished: the last epoch's reports, the last checkpoint's write.

  ``writes``: the uninterrupted run's, from which the aimed writes are drawn.
  """
  cache_writes = sorted({w for w in writes if ' cache/' in w})
  other_writes = sorted(set(writes) - set(cache_writes))
  middle = ([_Kill('checkpoint', rng.uniform(0.0, 0.05))]
            + [_Kill('uniform', rng.random()) for _ in range(4)]
            + [_Kill(f'write {w}', 0.0) for w in rng.sample(other_writes, NUM_KILLS - 9)])
  rng.shuffle(middle)
  plan = [_Kill(f'write {rng.choice(cache_writes)}', 0.0), _Kill('cache', 0.0), *middle]
  for kill in plan:
    kill.cap = rng.uniform(0.0, 0.2)
  return plan + [_Kill('reports', rng.uniform(0.0, 0.3)),
                 _Kill('last checkpoint', rng.uniform(0.0, 0.05))]


@dataclasses.dataclass
class _Timeline:
  """When things happen in an uninterrupted run: the kill times are drawn over it."""
  wall: float  # launch to exit
  setup: float  # launch to the end of set-up (compilation and training follow)
  total_steps: int
  rerun: float  # launch to exit of the same command on the finished workdir

  def expected_life(self, workdir: str) -> float:
    """A rerun repeats the set-up (as fast as the finished run's rerun), then
    trains only the steps not yet checkpointed."""
    done = (_steps(workdir) or [0])[-1]
    return self.rerun + (self.wall - self.setup) * (self.total_steps - done) / self.total_steps


def _trigger(kill: _Kill, run: _Run, workdir: str, steps_at_start: list[int]) -> bool:
  """True once the kill's phase is reached, or once it was missed (then it lands late)."""
  if kill.aim == 'uniform':
    return True
  if kill.aim == 'cache':
    return _new(run, _cache_tmp(workdir)) or run.seen('data: ')
  if kill.aim == 'last checkpoint':
    return _new(run, _ckpt_tmp(workdir)) or _steps(workdir) != steps_at_start
  if kill.aim == 'checkpoint':  # not the last one: the run would be finished
    last = f'{LAST_STEP}.'
    return any(not os.path.basename(p).startswith(last)
               for p in set(_ckpt_tmp(workdir)) - run.stale) or any(
                   s not in steps_at_start and s != LAST_STEP for s in _steps(workdir))
  if kill.aim == 'reports':
    return run.seen(LAST_EPOCH_LINE)
  return False  # a write: the run kills itself


def _run_until_killed(kill: _Kill, workdir: str, timeline: _Timeline,
                      timeout: float = 300) -> _Run:
  """Starts the command and SIGKILLs it as ``kill`` says (unless it ends first)."""
  steps_at_start = _steps(workdir)
  life = timeline.expected_life(workdir)
  write = kill.aim[len('write '):] if kill.aim.startswith('write ') else ''
  run = _Run(workdir, kill_at_write=write)
  fire_at, capped = None, ''
  while run.proc.poll() is None and run.elapsed() < timeout:
    if fire_at is None and _trigger(kill, run, workdir, steps_at_start):
      fire_at = run.elapsed() + (kill.draw * life if kill.aim == 'uniform' else kill.draw)
    if kill.cap is not None and not capped and run.seen(LAST_EPOCH_LINE):
      capped = f' (capped: {kill.cap:.2f}s after the last epoch)'
      fire_at = min(fire_at or float('inf'), run.elapsed() + kill.cap)
    if fire_at is not None and run.elapsed() >= fire_at:
      kill.at, kill.landed = run.elapsed(), _phase(run, workdir) + capped
      run.proc.send_signal(signal.SIGKILL)
      run.proc.wait()
      return run
    time.sleep(0.001)
  if run.proc.poll() is None:
    run.proc.kill()
    run.proc.wait()
    pytest.fail(f'run did not finish in {timeout} s:\n{run.output()}')
  if write and run.proc.returncode == -signal.SIGKILL and run.writes()[-1:] == [write]:
    kill.at = run.elapsed()
    kill.landed = f'{_phase(run, workdir)}, write #{len(run.writes())} of this run'
  else:
    kill.landed = f'not sent: the run ended first (exit {run.proc.returncode})'
  return run


# ----------------------------------------------------------------------------
# What must match the uninterrupted run.


def _steps(workdir: str) -> list[int]:
  return sorted(int(os.path.basename(d)) for d in glob.glob(os.path.join(workdir, 'checkpoints', '*'))
                if os.path.basename(d).isdigit())


def _final_state(workdir: str):
  step = _steps(workdir)[-1]
  saved = ocp.PyTreeCheckpointer().restore(os.path.join(workdir, 'checkpoints', str(step), 'state'))
  return step, jax.tree.map(np.asarray, (saved['params'], saved['batch_stats'], saved['opt_state'],
                                         saved['step'], saved['rng']))


def _history(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.json')) as f:
    rows = json.load(f)
  return [{k: v for k, v in row.items() if k not in CLOCK_FIELDS} for row in rows]


def _csv(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.csv'), newline='') as f:
    return [{k: v for k, v in row.items() if k not in CLOCK_FIELDS} for row in csv.DictReader(f)]


def _files(workdir: str) -> set[str]:
  """Every file and folder, but TensorBoard event files as one entry (one file per
  process) and within a checkpoint only the first three levels (below them,
  Orbax's OCDBT store names its data files at random)."""
  out = set()
  for folder, dirs, files in os.walk(workdir):
    for name in dirs + files:
      rel = os.path.relpath(os.path.join(folder, name), workdir)
      parts = rel.split(os.sep)
      if parts[0] == 'tensorboard' and len(parts) > 1:
        rel = 'tensorboard/<events>'
      elif parts[0] == 'checkpoints' and len(parts) > 4:
        rel = os.sep.join(parts[:4] + ['<data>'])
      out.add(rel)
  return out


def _lock_free(workdir: str) -> bool:
  """Nobody holds the workdir lock (the kernel drops it with its process)."""
  path = workdir_lock.lock_path(workdir)
  if not os.path.exists(path):
    return True
  with open(path) as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      return False
    fcntl.flock(f, fcntl.LOCK_UN)
  return True


def _leftovers(workdir: str) -> list[str]:
  """Temporary files and folders anywhere in the workdir."""
  patterns = ('**/*.tmp*', '**/.tmp-*', '**/*orbax-checkpoint-tmp*', '**/*_damaged*')
  return sorted({p for pat in patterns
                 for p in glob.glob(os.path.join(workdir, pat), recursive=True)})


def test_random_sigkills_end_as_the_uninterrupted_run(tmp_path):
  reference = str(tmp_path / 'reference')
  ref = _Run(reference)
  assert ref.finish() == 0, ref.output()
  rerun = _Run(reference)  # a finished run re-reports: the set-up time of a rerun
  assert rerun.finish() == 0, rerun.output()
  timeline = _Timeline(wall=ref.elapsed(), total_steps=_steps(reference)[-1],
                       setup=next(t for t, line in ref.lines if ' train / ' in line),
                       rerun=rerun.elapsed())
  for write in ('replace config.json', 'replace metrics.json', 'rename cache/*', 'rename checkpoints/#'):
    assert write in ref.writes(), ref.writes()  # the hook sees the run's writes

  workdir = str(tmp_path / 'killed')
  rng = random.Random(SEED)
  plan, kills = _plan(rng, ref.writes()), []
  while plan and len(kills) < 3 * NUM_KILLS:
    kill = plan.pop(0)
    kills.append(kill)
    run = _run_until_killed(kill, workdir, timeline)
    if not kill.at:  # it ended by itself: it must have ended well; draw another
      assert run.proc.returncode == 0, _report(timeline, kills, run.output())
    if not plan and sum(bool(k.at) for k in kills) < NUM_KILLS:
      plan.append(_Kill('uniform', rng.random()))
  final = _Run(workdir)
  code = final.finish()
  context = _report(timeline, kills, final.output())
  assert code == 0, context
  assert sum(bool(k.at) for k in kills) >= NUM_KILLS, context

  assert _steps(workdir) == _steps(reference), context
  (step_a, tree_a), (step_b, tree_b) = _final_state(reference), _final_state(workdir)
  assert step_a == step_b, context
  for x, y in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
    np.testing.assert_array_equal(x, y, err_msg=context)
  assert _history(workdir) == _history(reference), context
  assert _csv(workdir) == _csv(reference), context
  assert _leftovers(workdir) == [], context
  assert _lock_free(workdir), context
  assert _files(workdir) == _files(reference), (
      f'only here: {sorted(_files(workdir) - _files(reference))}; only in the uninterrupted '
      f'run: {sorted(_files(reference) - _files(workdir))}\n{context}')
  print(context)


def _write(what: str, relpath: str) -> str:
  """A write as the hook logs it (the same normalisation as in ``_HOOK``)."""
  return f'{what} {re.sub(r"[0-9]+", "#", re.sub(r"[0-9a-f]{6,}", "*", relpath))}'


def test_kills_at_the_writes_that_once_broke_a_rerun(tmp_path):
  """Kills at writes the random test found harmful, each one at least once.

  A kill while config.json was rewritten left it empty, and every later run of
  the workdir failed reading it; killed writes of data_summary.json and of
  the cache's split views left their temporary files behind for good.
  """
  workdir = str(tmp_path / 'run')
  host = socket.gethostname()
  writes = [_write('open', f'cache/0123456789abcdef/views/0123456789abcdef.npy.tmp-{host}-1-abcdef.npy'),
            'rename checkpoints/#',  # the first checkpoint: later runs check config.json
            _write('open', 'config.json.tmp'),
            _write('open', f'data_summary.json.tmp-{host}-1-abcdef')]
  for write in writes:
    run = _Run(workdir, kill_at_write=write)
    assert run.finish() == -signal.SIGKILL, (write, run.output())
    assert run.writes()[-1] == write
  final = _Run(workdir)
  assert final.finish() == 0, final.output()
  assert _steps(workdir)[-1] == LAST_STEP
  assert _leftovers(workdir) == []


def _report(timeline: _Timeline, kills: list[_Kill], output: str) -> str:
  lines = '\n'.join(f'  {i + 1}. {k}' for i, k in enumerate(kills))
  return (f'seed {SEED} (MELGENRE_FAULT_SEED={SEED} replays it); uninterrupted run '
          f'{timeline.wall:.1f} s, set-up {timeline.setup:.1f} s, rerun when finished '
          f'{timeline.rerun:.1f} s; kills:\n{lines}\n'
          f'last run output:\n{output}')
