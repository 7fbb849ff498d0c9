"""Round-robin benchmark harness: one worker process per variant, timed in turn.

Why processes: the peers cannot share one (Keras picks its backend at import,
XLA reads XLA_FLAGS once, TF/torch/JAX each own a thread pool), and a worker
that only sits on ``stdin`` between its turns costs the others nothing. Why
round-robin: the machine is shared, so its speed drifts; timing every variant
once per round, several rounds, and taking each one's median lets the drift
hit all alike - compare the ratios within one run, not numbers across runs.

Protocol: the driver writes one JSON command per line to a worker's stdin
(``{"cmd": "setup"}``, ``{"cmd": "run", "n": N}``, ``{"cmd": "quit"}``) and
reads one JSON reply per line from the worker's original stdout. Inside the
worker fd 1 is pointed at stderr, so whatever libraries print never mixes
with replies; stderr goes to a log file that is shown when a worker fails.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any, Protocol

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# ---------------------------------------------------------------- machine


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine_lines() -> list[str]:
  """Date, CPU, cores, load and thread-related environment, for every table header."""
  env = {k: os.environ.get(k, '-') for k in
         ('XLA_FLAGS', 'OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS',
          'TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS')}
  load = os.getloadavg()
  return [
      f'date: {datetime.datetime.now().astimezone().isoformat(timespec="seconds")}; '
      f'host: {platform.node()}; python {platform.python_version()}',
      f'CPU: {cpu_model()}; os.cpu_count()={os.cpu_count()}, usable cores='
      f'{len(os.sched_getaffinity(0))}; load average (1/5/15 min) '
      f'{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}',
      'env: ' + ', '.join(f'{k}={v}' for k, v in env.items()),
  ]


# ---------------------------------------------------------------- worker side


class Runner(Protocol):
  """What a worker process times: ``setup`` once (build, compile, warm up), then ``run``."""

  def setup(self) -> dict[str, Any]:
    ...

  def run(self, n: int) -> float:
    """Does ``n`` units of work, waits for them to finish, returns seconds."""
    ...


def serve(make_runner: Callable[[], Runner]) -> None:
  """The worker's main loop (call from ``--worker`` mode, never in the driver)."""
  replies = os.fdopen(os.dup(1), 'w', buffering=1)
  os.dup2(2, 1)  # library prints on fd 1 now go to stderr
  sys.stdout = sys.stderr
  runner = None
  for line in sys.stdin:
    msg = json.loads(line)
    try:
      if msg['cmd'] == 'setup':
        start = time.perf_counter()
        runner = make_runner()
        info = runner.setup()
        info.setdefault('setup_s', time.perf_counter() - start)
        reply = {'ok': True, **info}
      elif msg['cmd'] == 'run':
        reply = {'ok': True, 'seconds': runner.run(int(msg['n']))}
      elif msg['cmd'] == 'quit':
        return
      else:
        reply = {'ok': False, 'error': f'unknown command {msg["cmd"]!r}'}
    except Exception as e:  # pylint: disable=broad-except
      traceback.print_exc()
      reply = {'ok': False, 'error': f'{type(e).__name__}: {e}'}
    replies.write(json.dumps(reply) + '\n')


# ---------------------------------------------------------------- driver side


@dataclasses.dataclass
class Variant:
  """One timed row: a worker started as ``python script --worker=name`` with extra env."""
  name: str
  label: str
  env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Result:
  variant: Variant
  info: dict[str, Any] = dataclasses.field(default_factory=dict)
  seconds: list[float] = dataclasses.field(default_factory=list)  # per unit, one per round
  error: str | None = None

  @property
  def median(self) -> float:
    return statistics.median(self.seconds) if self.seconds else float('nan')


class _Worker:

  def __init__(self, script: str, variant: Variant, extra_args: Sequence[str], log_dir: str):
    self.variant = variant
    self.log_path = os.path.join(log_dir, f'{variant.name}.log')
    self._log = open(self.log_path, 'w')
    env = dict(os.environ)
    env.update(variant.env)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [REPO_ROOT, env.get('PYTHONPATH')]))
    self.proc = subprocess.Popen(
        [sys.executable, script, f'--worker={variant.name}', *extra_args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env,
        text=True, cwd=REPO_ROOT)

  def send(self, msg: dict[str, Any]) -> None:
    self.proc.stdin.write(json.dumps(msg) + '\n')
    self.proc.stdin.flush()

  def receive(self) -> dict[str, Any]:
    line = self.proc.stdout.readline()
    if not line:
      self._log.flush()
      with open(self.log_path) as f:
        tail = ''.join(f.readlines()[-15:])
      return {'ok': False, 'error': f'worker exited (code {self.proc.poll()}); log tail:\n{tail}'}
    return json.loads(line)

  def close(self) -> None:
    try:
      if self.proc.poll() is None:
        self.send({'cmd': 'quit'})
        self.proc.wait(timeout=30)
    except (OSError, subprocess.TimeoutExpired):
      self.proc.kill()
    self._log.close()


def run_round_robin(script: str, variants: Sequence[Variant], *, rounds: int, units: int,
                    extra_args: Sequence[str] = (), parallel_setup: bool = False,
                    pause_s: float = 0.2, warmup_rounds: int = 0, log=print) -> list[Result]:
  """Sets every variant up, then times ``units`` of work per variant per round, in turn.

  ``parallel_setup`` builds/compiles all workers at once (less wall time; their
  setup times then include each other's load). ``warmup_rounds`` untimed rounds
  of every variant come first, in the same order: after a parallel setup the
  first rounds still meet background work of the setups (compiler worker
  processes, thread pools winding down) and would time the machine, not the
  rows. A failed variant is reported and skipped; the others go on.
  """
  log_dir = tempfile.mkdtemp(prefix='melgenre_bench_')
  workers = [_Worker(script, v, extra_args, log_dir) for v in variants]
  results = {w.variant.name: Result(w.variant) for w in workers}
  try:
    live = []
    if parallel_setup:
      for w in workers:
        w.send({'cmd': 'setup'})
    for w in workers:
      if not parallel_setup:
        w.send({'cmd': 'setup'})
      reply = w.receive()
      r = results[w.variant.name]
      if reply.get('ok'):
        r.info = reply
        live.append(w)
        log(f'  set up {w.variant.name} in {reply.get("setup_s", float("nan")):.1f} s')
      else:
        r.error = reply.get('error', 'unknown error')
        log(f'  {w.variant.name} FAILED during setup: {r.error}')
    for i in range(-warmup_rounds, rounds):
      for w in list(live):
        time.sleep(pause_s)  # lets the previous worker's spinning threads go to sleep
        w.send({'cmd': 'run', 'n': units})
        reply = w.receive()
        r = results[w.variant.name]
        if reply.get('ok'):
          if i >= 0:
            r.seconds.append(reply['seconds'] / units)
        else:
          r.error = reply.get('error', 'unknown error')
          live.remove(w)
          log(f'  {w.variant.name} FAILED in round {i + 1}: {r.error}')
      if i < 0:
        log(f'  warm-up round {warmup_rounds + i + 1}/{warmup_rounds} done (not timed)')
        continue
      log(f'  round {i + 1}/{rounds}: ' + ', '.join(
          f'{w.variant.name} {results[w.variant.name].seconds[-1] * 1e3:.0f} ms'
          for w in live))
  finally:
    for w in workers:
      w.close()
  return [results[v.name] for v in variants]


def parse_worker_flag(argv: Sequence[str]) -> str | None:
  """The ``--worker=NAME`` of a worker process (absl is not needed to see it)."""
  for a in argv:
    if a.startswith('--worker='):
      return a.split('=', 1)[1]
  return None


def spread(seconds: Sequence[float]) -> str:
  """min-max of per-unit times in ms, for the tables."""
  if not seconds:
    return '-'
  return f'{min(seconds) * 1e3:.0f}-{max(seconds) * 1e3:.0f}'
