"""benchmarks/accelerator_check.sh: the one command to run when an accelerator is lent."""

import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, 'benchmarks', 'accelerator_check.sh')
SECTIONS = ('device tests', 'train step', 'log-mel front end', 'predict throughput',
            'synthetic training run')


def _run(*args, **env):
  return subprocess.run(['bash', SCRIPT, *args], cwd=ROOT, capture_output=True, text=True,
                        env={**os.environ, 'PYTHON': sys.executable, **env}, timeout=900)


def test_unknown_argument_is_refused():
  result = _run('--bogus')
  assert result.returncode == 2
  assert "unknown argument '--bogus'" in result.stderr


@pytest.mark.slow
def test_dry_run_writes_a_complete_report(tmp_path):
  result = _run('--dry-run', '--out', str(tmp_path))
  reports = glob.glob(str(tmp_path / 'accelerator_*.md'))
  assert len(reports) == 1, result.stderr[-3000:]
  text = open(reports[0]).read()
  assert result.returncode == 0, text[-4000:]
  assert text.startswith('# Accelerator check: 2 x cpu')
  for name in SECTIONS:
    assert any(line.startswith(f'| {name}') and '| ok |' in line
               for line in text.splitlines()), (name, text[:2000])
  assert 'SUMMARY: JAX train step' in text  # the benchmark's own table came through
  assert 'metrics.csv of the training run' in text


@pytest.mark.slow
def test_spent_budget_skips_sections_but_still_reports(tmp_path):
  result = _run('--dry-run', '--out', str(tmp_path), '--budget_seconds=0')
  assert result.returncode == 1
  text = open(glob.glob(str(tmp_path / 'accelerator_*.md'))[0]).read()
  assert text.count('skipped: budget spent') == len(SECTIONS)
