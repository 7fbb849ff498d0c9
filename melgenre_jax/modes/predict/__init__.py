"""Classify any song, folder or whole music library with a trained workdir.

Each file is streamed (any supported format, resampled to the training sample
rate, cut into windows exactly as in training, or with another hop), decoded a
few files ahead of the model, and classified in batches shared across files.
A song's genre is the calibrated mean of its windows' probabilities; each
window's argmax gives a timeline. Answers are printed, written as one JSON
report, or appended to a CSV that a re-run resumes.

  inputs.py    paths, folders and wildcards; each file's stamp (size, mtime)
  stream.py    the engine predict and embed share: options, file jobs, decoding
               ahead in input order, shared batches
  classify.py  one song's answer (calibrated genres, top-k, timeline)
  output.py    text, JSON, the resumable CSV, plot names
  mode.py      ``predict_paths``: PredictOptions -> model -> answers
"""

from melgenre_jax.errors import NothingClassifiedError
from melgenre_jax.modes.predict.classify import classify_files
from melgenre_jax.modes.predict.classify import iter_results
from melgenre_jax.modes.predict.classify import song_segments
from melgenre_jax.modes.predict.inputs import expand_paths
from melgenre_jax.modes.predict.mode import PREDICTIONS_DIR
from melgenre_jax.modes.predict.mode import WRITE_TAGS
from melgenre_jax.modes.predict.mode import Interrupted
from melgenre_jax.modes.predict.mode import PredictOptions
from melgenre_jax.modes.predict.mode import predict_paths
from melgenre_jax.modes.predict.output import OUTPUTS
from melgenre_jax.modes.predict.output import format_text
from melgenre_jax.modes.predict.stream import DEFAULT_DECODE_WORKERS
from melgenre_jax.modes.predict.stream import Options

__all__ = ['DEFAULT_DECODE_WORKERS', 'Interrupted', 'NothingClassifiedError', 'OUTPUTS',
           'Options', 'PREDICTIONS_DIR', 'PredictOptions', 'WRITE_TAGS', 'classify_files', 'expand_paths',
           'format_text', 'iter_results', 'predict_paths', 'song_segments']
