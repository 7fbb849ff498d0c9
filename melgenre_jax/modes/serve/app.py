"""The web app: the page, ``POST /api/predict`` and ``GET /healthz`` (Starlette).

Every refusal is a 4xx whose JSON body says why in ``error``; an unexpected
failure while classifying one upload is a 500 for that request only. The
upload's temp file is removed once it is answered.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.responses import JSONResponse
from starlette.responses import Response
from starlette.routing import Route

from melgenre_jax.modes.serve import uploads
from melgenre_jax.modes.serve.classifier import Classifier

PAGE_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'page.html')


def read_page() -> str:
  with open(PAGE_FILE, encoding='utf-8') as f:
    return f.read()


def health(classifier: Classifier, limit_bytes: int) -> dict[str, Any]:
  """What ``/healthz`` reports: the model's identity, the limits and the queue."""
  header = classifier.header
  return {'status': 'ok', 'checkpoint_step': header['checkpoint_step'],
          'genres': header['genres'], 'task': header['task'],
          'temperature': header['temperature'], 'top_k': classifier.options.top_k,
          'min_confidence': classifier.options.min_confidence,
          'max_seconds': classifier.options.max_seconds, 'max_upload_bytes': limit_bytes,
          'waiting': classifier.waiting, 'answered': classifier.answered}


def make_app(classifier: Classifier, limit_bytes: int, upload_dir: str) -> Starlette:
  """The routes, bound to one classifier and the server's own temp folder."""
  page = read_page()

  async def index(request: Request) -> Response:
    del request
    return HTMLResponse(page)

  async def healthz(request: Request) -> Response:
    del request
    return JSONResponse(health(classifier, limit_bytes))

  async def predict(request: Request) -> Response:
    try:
      upload = await uploads.receive(request, limit_bytes, upload_dir)
    except uploads.UploadError as e:
      logging.info('Refused an upload (%d): %s', e.status, e.reason)
      return JSONResponse({'error': e.reason}, status_code=e.status)
    try:
      answer = await classifier.answer(upload)
    except Exception as e:  # pylint: disable=broad-except
      # A bug met by one upload must not take the server down with it.
      logging.exception('Failed on %s', upload.filename)
      return JSONResponse({'error': f'the server failed on this file: {type(e).__name__}: '
                                    f'{e}'}, status_code=500)
    finally:
      os.remove(upload.path)
    row = answer.body['results'][0]
    logging.info('%s (%d bytes): %d %s', upload.filename, upload.size_bytes, answer.status,
                 row.get('genre') or row.get('reason'))
    return JSONResponse(answer.body, status_code=answer.status)

  return Starlette(routes=[
      Route('/', index, methods=['GET']),
      Route('/healthz', healthz, methods=['GET']),
      Route('/api/predict', predict, methods=['POST']),
  ])
