"""``--mode=calibrate``: fits the temperature of a trained checkpoint on its validation songs.

Training already calibrates its best checkpoint at the end (train.py); this
mode refits it, for another ``--step``, or after a run whose end-of-training
calibration failed. The maths and ``WORKDIR/calibration.json`` are in
calibration.py.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections

from melgenre_jax import calibration
from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import input_pipeline
from melgenre_jax.errors import WorkdirError
from melgenre_jax.modes import evaluate


def calibrate_workdir(config: ml_collections.ConfigDict, workdir: str,
                      step: int | None = None) -> dict[str, Any]:
  """Fits T of the best checkpoint (or ``step``) on validation and records it.

  The validation songs come the way eval gets its split (rebuilt and checked
  against the ones recorded at training time). Returns the entry, with
  ``step`` and ``path`` added.
  """
  config_checks.check_genre_task(
      config, '--mode=calibrate fits a temperature to a genre softmax',
      'its sigmoid tag probabilities are used as they are, nothing to calibrate (eval and '
      'predict work without it)')
  workdir = os.path.abspath(workdir)
  config_checks.check_workdir_compatible(config, workdir)
  model = inference.load_for_inference(config, workdir, step, calibrated=False)
  dataset = input_pipeline.load_dataset(config, workdir)
  if not calibration.has_songs(dataset.validation):
    raise WorkdirError(
        f'{workdir} has no validation songs to fit a temperature on; retrain with '
        'config.data.validation_fraction > 0 (or a manifest with a validation split).')
  segments = evaluate.checked_split(dataset, workdir, 'validation')
  entry = calibration.calibrate_model(model, segments, workdir)
  path = workdir_lib.path(workdir, workdir_lib.CALIBRATION)
  if jax.process_index() == 0:
    print(f"Step {model.step}: temperature {entry['temperature']:.4f} fitted on "  # CLI output
          f"{entry['songs']} validation songs; song ECE {entry['song_ece_before']:.4f} -> "
          f"{entry['song_ece_after']:.4f}, song NLL {entry['nll_before']:.4f} -> "
          f"{entry['nll_after']:.4f}\nWritten to {path} and "
          f'{workdir_lib.path(workdir, workdir_lib.CALIBRATION_PLOT)}')
    if not entry.get('applied', True):
      print(f"Not applied (temperature 1): {entry['reason']}.")  # CLI output
  return {**entry, 'step': model.step, 'path': path}
