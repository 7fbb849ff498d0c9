"""A damaged best checkpoint: every inference mode falls back to the newest readable one (#34)."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import shutil

import pytest
import soundfile as sf

from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import synthetic
from melgenre_jax.errors import WorkdirError
from melgenre_jax.modes import dispatch


def _truncate_state(workdir: str, step: int) -> None:
  """Cuts every data file of ``step``'s state to a third, as a full disk or a bad copy does."""
  files = [p for p in glob.glob(os.path.join(workdir, 'checkpoints', str(step), 'state', '**',
                                             '*'), recursive=True) if os.path.isfile(p)]
  assert files
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 3)


@pytest.fixture
def damaged_run(tiny_run_dir, tmp_path):
  """A copy of the tiny run whose best checkpoint is damaged; (workdir, best, other steps)."""
  workdir = shutil.copytree(tiny_run_dir, str(tmp_path / 'run'))
  best = inference.checkpoint_step(workdir)
  others = [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
            if n.isdigit() and int(n) != best]
  assert others, 'the tiny run keeps more than one checkpoint'
  _truncate_state(workdir, best)
  return workdir, best, sorted(others)


def _song(tmp_path) -> str:
  path = str(tmp_path / 'song.wav')
  sf.write(path, synthetic.synthesize_song('synthetic/blues/0100', 8000, 2.0), 8000)
  return path


def _quiet(fn, *args, **kwargs):
  with contextlib.redirect_stdout(io.StringIO()):
    return fn(*args, **kwargs)


def _moved_aside(workdir: str, step: int) -> bool:
  return bool(glob.glob(os.path.join(workdir, 'checkpoints_damaged', f'{step}.*')))


@pytest.mark.slow
@pytest.mark.parametrize('mode', ['eval', 'predict', 'embed', 'export'])
def test_each_inference_mode_answers_from_the_newest_readable_step(damaged_run, tmp_path,
                                                                   caplog, mode):
  workdir, best, others = damaged_run
  options = dispatch.RunOptions(audio=(_song(tmp_path),) if mode in ('predict', 'embed')
                                else ())
  result = _quiet(dispatch.run, mode, None, workdir, options)
  used = {'eval': lambda r: r['checkpoint']['step'],
          'predict': lambda r: None,
          'embed': lambda r: r['checkpoint_step'],
          'export': lambda r: r['checkpoint_step']}[mode](result)
  if mode == 'predict':
    assert result and all(r['ok'] for r in result)
  else:
    assert used == others[-1]
  warnings = [r.getMessage() for r in caplog.records
              if r.levelname == 'WARNING' and 'is damaged' in r.getMessage()]
  assert len(warnings) == 1 and f'step {best}' in warnings[0]
  assert f'using step {others[-1]}' in warnings[0] and 'checkpoints_damaged' in warnings[0]
  assert _moved_aside(workdir, best)
  assert best not in [int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints'))
                      if n.isdigit()]


@pytest.mark.slow
def test_explicit_damaged_step_and_no_readable_step_are_one_line(damaged_run, tmp_path):
  workdir, best, others = damaged_run
  config = workdir_lib.load_workdir_config(workdir)
  with pytest.raises(WorkdirError, match=f'checkpoint at step {best} .* cannot be read .*drop '
                     '--step') as e:
    inference.load_for_inference(config, workdir, best)
  assert '\n' not in str(e.value)
  assert not _moved_aside(workdir, best)  # an explicit --step moves nothing
  for step in others:
    _truncate_state(workdir, step)
  with pytest.raises(WorkdirError, match='None of the checkpoints .* can be read') as e:
    _quiet(dispatch.run, 'predict', None, workdir,
           dispatch.RunOptions(audio=(_song(tmp_path),)))
  assert '\n' not in str(e.value)
