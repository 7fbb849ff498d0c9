"""One loaded model answering uploads one at a time, through predict's own code.

Requests wait in a single worker thread's queue: the model is loaded once and
never run by two requests at the same time (JAX would compile and hold memory
per caller, and two callers would only share the same cores). Each upload is
read by predict's streamed decoder (``classify.iter_results``) and answered with
predict's row, its ``path`` the client's file name.

An upload longer than ``max_seconds`` is refused (predict would cut it there):
by its header when the header knows the length, else by decoding at most one
second past the limit.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading
from typing import Any

import numpy as np

from melgenre_jax import inference
from melgenre_jax.data import audio
from melgenre_jax.modes import exported_model
from melgenre_jax.modes.predict import classify
from melgenre_jax.modes.predict import inputs
from melgenre_jax.modes.predict import stream
from melgenre_jax.modes.serve.uploads import Upload

# Decoded past --max_seconds when the header gives no length: enough to tell "longer".
_OVER_LIMIT_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class Answer:
  """An HTTP status and its JSON body."""

  status: int
  body: dict[str, Any]


class Classifier:
  """The server's one model; ``answer`` queues an upload for the worker thread."""

  def __init__(self, model: inference.InferenceModel | exported_model.ExportedModel,
               options: stream.Options,
               header: dict[str, Any]):
    self.model = model
    self.options = options  # options.max_seconds: the longest upload answered
    self.header = header  # predict's JSON header: the fields around 'results'
    self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix='serve-model')
    self._lock = threading.Lock()
    self._waiting = 0
    self.answered = 0

  @property
  def waiting(self) -> int:
    """Uploads queued or being classified now."""
    return self._waiting

  def warm_up(self) -> None:
    """Compiles the predict step now, so the first upload does not wait for it."""
    batch = inference.inference_batch_size(self.model.config.eval_batch_size)
    self.model.predict(np.zeros((batch, *self.model.spec.input_shape), np.float32))

  async def answer(self, upload: Upload) -> Answer:
    with self._lock:
      self._waiting += 1
    try:
      return await asyncio.get_running_loop().run_in_executor(
          self._pool, self.answer_now, upload)
    finally:
      with self._lock:
        self._waiting -= 1
        self.answered += 1

  def answer_now(self, upload: Upload) -> Answer:
    """Classifies one upload in the calling thread (the worker's)."""
    job = stream.FileJob(upload.path, None,
                         inputs.Stamp(upload.filename, str(upload.size_bytes), ''))
    limit = float(self.options.max_seconds)
    try:
      seconds = audio.probe(upload.path).duration_seconds
    except audio.AudioError as e:
      return self._refused(upload, job, 422, e.reason)
    if seconds is not None and seconds - self.options.offset_seconds > limit:
      return self._refused(upload, job, 422, too_long(seconds, limit))
    options = dataclasses.replace(self.options, max_seconds=limit + _OVER_LIMIT_SECONDS)
    row = _relabelled(list(classify.iter_results(self.model, [job], options,
                                                 decode_workers=1))[0], upload)
    if not row['ok']:
      return Answer(422, {'error': row['reason'], **self.header, 'results': [row]})
    if row['duration_seconds'] > limit:
      return self._refused(upload, job, 422, too_long(None, limit))
    return Answer(200, {**self.header, 'results': [row]})

  def _refused(self, upload: Upload, job: stream.FileJob, status: int,
               reason: str) -> Answer:
    row = _relabelled(classify.failure(job, reason), upload)
    return Answer(status, {'error': row['reason'], **self.header, 'results': [row]})

  def close(self) -> None:
    self._pool.shutdown(wait=True, cancel_futures=True)


def too_long(seconds: float | None, limit: float) -> str:
  length = f'{seconds:.1f} s long' if seconds is not None else 'longer than that'
  return (f'the audio is {length}; this server answers for at most {limit:g} s '
          '(--max_seconds): send an excerpt, or restart it with a larger --max_seconds.')


def _relabelled(row: dict[str, Any], upload: Upload) -> dict[str, Any]:
  """The row with the client's file name where the server's temp path was."""
  row = dict(row, path=upload.filename)
  if row.get('reason'):
    row['reason'] = row['reason'].replace(upload.path, upload.filename)
  return row
