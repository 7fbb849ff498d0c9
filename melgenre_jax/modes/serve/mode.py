"""``--mode=serve``: the model behind a local web page and a JSON API (uvicorn).

The model is loaded and its predict step compiled before the address is
printed, so the first request after that line is answered at full speed.
The socket is bound here (``--port=0``: the system picks a free port) and
handed to uvicorn, so the printed address is the real one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator

import ml_collections
import uvicorn

from melgenre_jax import config_checks
from melgenre_jax import inference
from melgenre_jax.errors import ConfigError
from melgenre_jax.modes import exported_model
from melgenre_jax.modes.predict import mode as predict_mode
from melgenre_jax.modes.predict import stream
from melgenre_jax.modes.serve import app as app_lib
from melgenre_jax.modes.serve.classifier import Classifier

DEFAULT_HOST = '127.0.0.1'
DEFAULT_PORT = 8000
DEFAULT_MAX_UPLOAD_MB = 200.0
# --max_seconds when not given: the longest upload answered (predict reads whole files).
DEFAULT_MAX_SECONDS = 1200.0


@dataclasses.dataclass(frozen=True)
class ServeOptions:
  """Where the server listens and what it accepts (the flags of the same names)."""

  host: str = DEFAULT_HOST
  port: int = DEFAULT_PORT
  max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB

  @property
  def limit_bytes(self) -> int:
    return int(self.max_upload_mb * 1e6)


def check_serve_options(serve: ServeOptions) -> None:
  """Refuses a port or upload limit that cannot work, naming the flag."""
  if not 0 <= serve.port <= 65535:
    raise ConfigError(f'--port={serve.port} must be in 0..65535 (0: any free port).')
  if not (math.isfinite(serve.max_upload_mb) and serve.limit_bytes >= 1):
    raise ConfigError(f'--max_upload_mb={serve.max_upload_mb} must be > 0 (megabytes one '
                      'upload may hold).')


def bind(host: str, port: int) -> socket.socket:
  """A listening socket on ``host:port`` (port 0: a free one).

  Raises:
    ConfigError: the address cannot be used (busy port, unknown host).
  """
  try:
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(address)
    sock.listen(128)
  except OSError as e:
    raise ConfigError(f'cannot listen on {host}:{port} ({e.strerror or e}): pick another '
                      '--port (--port=0 takes any free one) or --host.') from e
  return sock


def url_of(sock: socket.socket) -> str:
  host, port = sock.getsockname()[:2]
  return f'http://[{host}]:{port}/' if ':' in host else f'http://{host}:{port}/'


def load_classifier(config: ml_collections.ConfigDict | None, workdir: str | None,
                    step: int | None, options: stream.Options,
                    model_dir: str | None = None) -> Classifier:
  """The workdir's model (best checkpoint or ``step``), or an export folder's, behind one queue.

  ``model_dir`` (``--model``): an export folder, which carries its own config;
  ``config``, ``workdir`` and ``step`` are then unused.
  """
  model = exported_model.load_export_dir(model_dir) if model_dir else None
  config = model.config if model is not None else config
  if options.max_seconds is None:
    options = dataclasses.replace(options, max_seconds=DEFAULT_MAX_SECONDS)
  stream.check_options(options, config)
  predict_mode.check_genre_flags(config, options.min_confidence, 'off')
  workdir = os.path.abspath(workdir) if workdir else None
  if model is None:
    config_checks.check_workdir_compatible(config, workdir)
    model = inference.load_for_inference(config, workdir, step)
  header = predict_mode.json_header(workdir, model, config, options)
  classifier = Classifier(model, options, header)
  classifier.warm_up()
  return classifier


class _Server(uvicorn.Server):
  """uvicorn's server, but Ctrl+C (or SIGTERM) ends ``run`` by returning.

  uvicorn re-raises the signal after its graceful shutdown, which lands in
  asyncio's own SIGINT handler as a KeyboardInterrupt traceback; here the
  shutdown is the end, and the mode returns like any other.
  """

  @contextlib.contextmanager
  def capture_signals(self) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
      yield  # signals reach only the main thread; a test's server stops by should_exit
      return
    previous = {s: signal.signal(s, self.handle_exit) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
      yield
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)


@dataclasses.dataclass(frozen=True)
class Bound:
  """A server ready to run: ``server.run(sockets=[sock])`` answers at ``url``."""

  server: uvicorn.Server
  sock: socket.socket
  url: str
  upload_dir: str  # the uploads' temp files, each removed once answered

  def run(self) -> None:
    self.server.run(sockets=[self.sock])


@contextlib.contextmanager
def server(classifier: Classifier, serve: ServeOptions) -> Iterator[Bound]:
  """A uvicorn server for ``classifier`` on its bound socket; closes both after."""
  check_serve_options(serve)
  sock = bind(serve.host, serve.port)
  with tempfile.TemporaryDirectory(prefix='melgenre_serve_') as upload_dir, sock:
    app = app_lib.make_app(classifier, serve.limit_bytes, upload_dir)
    config = uvicorn.Config(app, log_level='warning', lifespan='off', access_log=False)
    yield Bound(_Server(config), sock, url_of(sock), upload_dir)


def serve_workdir(config: ml_collections.ConfigDict | None, workdir: str | None,
                  step: int | None = None, options: stream.Options = stream.Options(),
                  serve: ServeOptions = ServeOptions(), model_dir: str | None = None) -> None:
  """Serves the workdir's model (or ``model_dir``'s, an export folder) until Ctrl+C."""
  check_serve_options(serve)
  classifier = load_classifier(config, workdir, step, options, model_dir)
  source = os.path.abspath(model_dir or workdir)
  try:
    with server(classifier, serve) as bound:
      print(f'Serving {source} (step {classifier.model.step}) on {bound.url} (Ctrl+C stops)',
            flush=True)  # CLI output: the address to open
      bound.run()
  finally:
    classifier.close()
