"""``--mode=serve``: a trained model behind a local web page and a JSON API.

  uploads.py     one multipart upload into a temp file, within a byte limit
  classifier.py  the one model, a single worker thread, predict's code per upload
  app.py         the routes: the page, POST /api/predict, GET /healthz (Starlette)
  page.html      the page: drop or pick files, top genres, genre over time (no CDN)
  mode.py        ``serve_workdir``: flags -> model -> socket -> uvicorn
"""

from melgenre_jax.modes.serve.mode import DEFAULT_HOST
from melgenre_jax.modes.serve.mode import DEFAULT_MAX_SECONDS
from melgenre_jax.modes.serve.mode import DEFAULT_MAX_UPLOAD_MB
from melgenre_jax.modes.serve.mode import DEFAULT_PORT
from melgenre_jax.modes.serve.mode import ServeOptions
from melgenre_jax.modes.serve.mode import load_classifier
from melgenre_jax.modes.serve.mode import serve_workdir
from melgenre_jax.modes.serve.mode import server

__all__ = ['DEFAULT_HOST', 'DEFAULT_MAX_SECONDS', 'DEFAULT_MAX_UPLOAD_MB', 'DEFAULT_PORT',
           'ServeOptions', 'load_classifier', 'serve_workdir', 'server']
