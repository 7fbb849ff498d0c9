"""--mode=serve without a browser: the JSON API against a live server on a free local port.

The server runs in a thread of this process on the tiny run (the model loaded
once, as main.py loads it); the requests are plain urllib/http.client, so what
is tested is what a script sees over HTTP.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest
import soundfile as sf

from melgenre_jax import workdir as workdir_lib
from melgenre_jax.data import audio
from melgenre_jax.data import synthetic
from melgenre_jax.errors import ConfigError
from melgenre_jax.modes import dispatch
from melgenre_jax.modes import predict
from melgenre_jax.modes import serve
from melgenre_jax.modes.serve import classifier as classifier_lib
from melgenre_jax.modes.serve import mode as serve_mode
from melgenre_jax.modes.serve import uploads

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_SECONDS = 20.0
LIMIT_MB = 0.5


def write_inputs(folder) -> dict[str, str]:
  """A song (3.5 s at 22.05 kHz), one longer than MAX_SECONDS, and files that are no song."""
  folder = str(folder)
  os.makedirs(folder, exist_ok=True)
  paths = {name: os.path.join(folder, name) for name in (
      'song.wav', 'long.wav', 'big.wav', 'notes.txt', 'empty.wav', 'truncated.wav')}
  sf.write(paths['song.wav'], synthetic.synthesize_song('synthetic/blues/0100', 22050, 3.5),
           22050)
  sf.write(paths['long.wav'], synthetic.synthesize_song('synthetic/disco/0101', 4000, 30.0),
           4000)  # 240 kB: under the upload limit, over --max_seconds
  sf.write(paths['big.wav'], synthetic.synthesize_song('synthetic/disco/0102', 22050, 15.0),
           22050)  # 660 kB: over the upload limit
  with open(paths['notes.txt'], 'w', encoding='utf-8') as f:
    f.write('these are my notes, not a song\n' * 40)
  open(paths['empty.wav'], 'wb').close()
  with open(paths['song.wav'], 'rb') as f:
    head = f.read(600)  # the header and a few samples: the rest of the song is missing
  with open(paths['truncated.wav'], 'wb') as f:
    f.write(head)
  return paths


@contextlib.contextmanager
def running_server(workdir: str | None, model_dir: str | None = None, **options):
  """The tiny run (or an export folder) served on a free port from a thread; yields the Bound server."""
  config = workdir_lib.load_workdir_config(workdir) if workdir else None
  classifier = serve.load_classifier(
      config, workdir, None, predict.Options(max_seconds=MAX_SECONDS, **options), model_dir)
  try:
    with serve.server(classifier, serve.ServeOptions(port=0, max_upload_mb=LIMIT_MB)) as bound:
      thread = threading.Thread(target=bound.run, daemon=True)
      thread.start()
      deadline = time.monotonic() + 30
      while not bound.server.started:
        assert thread.is_alive() and time.monotonic() < deadline, 'the server did not start'
        time.sleep(0.05)
      try:
        yield bound
      finally:
        bound.server.should_exit = True
        thread.join(10)
  finally:
    classifier.close()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  body = (f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
          f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
          ).encode() + data + f'\r\n--{boundary}--\r\n'.encode()
  return body, f'multipart/form-data; boundary={boundary}'


def post(url: str, path: str | None = None, *, field: str = 'file', filename: str | None = None,
         data: bytes | None = None, content_type: str | None = None) -> tuple[int, dict]:
  """POSTs a file to /api/predict; returns the status and the JSON body."""
  if data is None:
    with open(path, 'rb') as f:
      data = f.read()
  body, kind = multipart(field, filename or os.path.basename(path), data)
  request = urllib.request.Request(url + 'api/predict', data=body if content_type is None else data,
                                   headers={'Content-Type': content_type or kind}, method='POST')
  try:
    with urllib.request.urlopen(request, timeout=120) as response:
      return response.status, json.load(response)
  except urllib.error.HTTPError as e:
    return e.code, json.load(e)


def get_json(url: str) -> dict:
  with urllib.request.urlopen(url, timeout=30) as response:
    return json.load(response)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  return write_inputs(tmp_path_factory.mktemp('serve_inputs'))


@pytest.fixture(scope='module')
def bound(tiny_run_dir):
  with running_server(tiny_run_dir) as b:
    yield b


def test_predict_answers_with_predicts_fields(bound, inputs, tiny_run_dir, tmp_path):
  status, body = post(bound.url, inputs['song.wav'])
  assert status == 200, body
  out = str(tmp_path / 'predictions.json')
  predict.predict_paths(workdir_lib.load_workdir_config(tiny_run_dir), tiny_run_dir,
                        predict.PredictOptions(paths=(inputs['song.wav'],), output='json',
                                               output_file=out,
                                               reading=predict.Options(max_seconds=MAX_SECONDS)))
  with open(out, encoding='utf-8') as f:
    expected = json.load(f)
  assert set(body) == set(expected)
  assert {k: body[k] for k in body if k != 'results'} == {
      k: expected[k] for k in expected if k != 'results'}
  row, want = body['results'][0], expected['results'][0]
  assert set(row) == set(want)
  assert row['path'] == 'song.wav'  # the client's name, never the server's temp path
  assert row['size_bytes'] == want['size_bytes']
  for key in ('ok', 'status', 'genre', 'num_segments', 'duration_seconds'):
    assert row[key] == want[key], key
  assert [t['genre'] for t in row['top_k']] == [t['genre'] for t in want['top_k']]
  for got, ref in zip(row['top_k'], want['top_k']):
    assert got['probability'] == pytest.approx(ref['probability'], abs=1e-6)
  assert row['num_segments'] == 3 and len(row['timeline']) == 3


@pytest.mark.parametrize('name,status,words', [
    ('empty.wav', 400, 'empty file'),
    ('truncated.wav', 422, 'too short'),
    ('notes.txt', 422, 'not a readable audio file'),
    ('big.wav', 413, '--max_upload_mb'),
    ('long.wav', 422, '--max_seconds'),
])
def test_hostile_uploads_get_a_4xx_with_the_reason(bound, inputs, name, status, words):
  got, body = post(bound.url, inputs[name])
  assert got == status, body
  assert words in body['error']
  assert bound.upload_dir not in json.dumps(body)  # no server path in any answer
  assert get_json(bound.url + 'healthz')['status'] == 'ok'  # still up


def test_requests_that_are_not_an_upload_are_refused(bound, inputs):
  status, body = post(bound.url, inputs['song.wav'], field='audio')
  assert status == 400 and 'no file in the field "file"' in body['error']
  with open(inputs['song.wav'], 'rb') as f:
    status, body = post(bound.url, data=f.read(), filename='x', content_type='audio/wav')
  assert status == 415 and 'multipart/form-data' in body['error']
  status, body = post(bound.url, data=b'--nope\r\nbroken', filename='x',
                      content_type='multipart/form-data; boundary=b')
  assert 400 <= status < 500, body


def test_oversized_stream_is_refused_while_reading(bound):
  """No Content-Length (chunked): the body is counted as it arrives and cut at the limit."""
  host, port = bound.sock.getsockname()[:2]
  body, kind = multipart('file', 'huge.wav', b'\0' * int(3 * LIMIT_MB * 1e6))
  conn = http.client.HTTPConnection(host, port, timeout=60)
  conn.putrequest('POST', '/api/predict')
  conn.putheader('Content-Type', kind)
  conn.putheader('Transfer-Encoding', 'chunked')
  conn.endheaders()
  try:
    for i in range(0, len(body), 65536):
      piece = body[i:i + 65536]
      conn.send(b'%x\r\n' % len(piece) + piece + b'\r\n')
    conn.send(b'0\r\n\r\n')
  except (BrokenPipeError, ConnectionResetError):
    pass  # the server answered and closed before the whole body was sent
  response = conn.getresponse()
  assert response.status == 413
  assert '--max_upload_mb' in json.load(response)['error']
  conn.close()
  assert get_json(bound.url + 'healthz')['status'] == 'ok'


def test_an_oversized_body_gets_an_answer_the_client_can_read(bound):
  """20 MB against a 0.5 MB limit: more than the socket buffers hold, so a server that
  answered without reading on would reset the connection under the sending client."""
  status, body = post(bound.url, data=b'\0' * 20_000_000, filename='huge.wav')
  assert status == 413 and '--max_upload_mb' in body['error']
  # Expect: 100-continue (curl's way for large files): refused on the headers, no body sent.
  host, port = bound.sock.getsockname()[:2]
  conn = http.client.HTTPConnection(host, port, timeout=30)
  conn.putrequest('POST', '/api/predict')
  conn.putheader('Content-Type', 'multipart/form-data; boundary=b')
  conn.putheader('Content-Length', '20000000')
  conn.putheader('Expect', '100-continue')
  conn.endheaders()
  response = conn.getresponse()
  assert response.status == 413 and '--max_upload_mb' in json.load(response)['error']
  conn.close()
  assert get_json(bound.url + 'healthz')['status'] == 'ok'


def test_client_file_names_are_labels_not_paths(bound, inputs):
  status, body = post(bound.url, inputs['song.wav'], filename='../../etc/passwd')
  assert status == 200 and body['results'][0]['path'] == 'passwd'
  assert uploads.label('C:\\Music\\song.MP3') == 'song.MP3'
  assert uploads.safe_suffix('C:\\Music\\song.MP3') == '.mp3'
  assert uploads.safe_suffix('../../etc/passwd') == ''
  assert uploads.label('') == 'upload'
  assert os.listdir(bound.upload_dir) == []  # every upload's temp file is gone


def test_concurrent_requests_are_all_answered_by_one_model(bound, inputs):
  before = get_json(bound.url + 'healthz')['answered']
  names = ['song.wav'] * 6 + ['notes.txt'] * 2
  with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
    answers = list(pool.map(lambda n: post(bound.url, inputs[n]), names))
  songs = [body for status, body in answers if status == 200]
  assert len(songs) == 6 and sum(status == 422 for status, _ in answers) == 2
  assert len({json.dumps(b['results'][0]['probabilities']) for b in songs}) == 1
  health = get_json(bound.url + 'healthz')
  assert health['answered'] == before + len(names) and health['waiting'] == 0


def test_min_confidence_marks_uncertain_songs(tiny_run_dir, inputs):
  with running_server(tiny_run_dir, min_confidence=0.99) as strict:
    status, body = post(strict.url, inputs['song.wav'])
  row = body['results'][0]
  assert status == 200 and body['min_confidence'] == 0.99
  assert row['status'] == 'uncertain' and row['uncertain'] and row['genre'] is None
  assert '--min_confidence' in row['reason'] and row['top_k']


def test_length_unknown_from_the_header_is_found_by_decoding(inputs, tiny_run_dir, tmp_path,
                                                             monkeypatch):
  """A file whose header gives no duration is refused after decoding just past the limit."""
  config = workdir_lib.load_workdir_config(tiny_run_dir)
  classifier = serve.load_classifier(config, tiny_run_dir, None,
                                     predict.Options(max_seconds=MAX_SECONDS))
  monkeypatch.setattr(classifier_lib.audio, 'probe',
                      lambda path: audio.AudioInfo(4000, 1, None))
  try:
    for name, status in (('long.wav', 422), ('song.wav', 200)):
      path = shutil.copy(inputs[name], str(tmp_path / name))
      answer = classifier.answer_now(uploads.Upload(path, name, os.path.getsize(path)))
      assert answer.status == status, answer.body
      assert status == 200 or 'longer than that' in answer.body['error']
  finally:
    classifier.close()


def test_page_is_self_contained(bound):
  with urllib.request.urlopen(bound.url, timeout=30) as response:
    page = response.read().decode()
  assert 'api/predict' in page and '<svg' not in page.split('<script>')[0]
  assert 'http://' not in page.replace('http://www.w3.org/2000/svg', '')
  assert 'https://' not in page and '<script src' not in page and '<link' not in page


def test_bad_serve_options_are_one_line_errors(tiny_run_dir):
  with pytest.raises(ConfigError, match='--port=70000'):
    serve_mode.check_serve_options(serve.ServeOptions(port=70000))
  with pytest.raises(ConfigError, match='--max_upload_mb'):
    serve_mode.check_serve_options(serve.ServeOptions(max_upload_mb=0))
  with serve_mode.bind('127.0.0.1', 0) as taken:
    with pytest.raises(ConfigError, match='--port=0 takes any free one'):
      serve_mode.bind('127.0.0.1', taken.getsockname()[1])
  config = workdir_lib.load_workdir_config(tiny_run_dir)
  with pytest.raises(ConfigError, match='--max_seconds'):
    serve.load_classifier(config, tiny_run_dir, None, predict.Options(max_seconds=0.1))


def test_an_export_folder_is_served_like_its_workdir(bound, inputs, tiny_run_dir, tmp_path):
  """--model EXPORT_DIR: the export folder alone answers as the workdir does."""
  workdir = shutil.copytree(tiny_run_dir, str(tmp_path / 'run'))
  with contextlib.redirect_stdout(io.StringIO()):
    dispatch.run('export', None, workdir)
  alone = shutil.copytree(os.path.join(workdir, 'export'), str(tmp_path / 'model'))
  shutil.rmtree(workdir)
  status, on_workdir = post(bound.url, inputs['song.wav'])
  assert status == 200
  with running_server(None, model_dir=alone) as from_export:
    status, body = post(from_export.url, inputs['song.wav'])
  assert status == 200, body
  assert body['model'] == alone and body['workdir'] is None
  row, want = body['results'][0], on_workdir['results'][0]
  assert row['genre'] == want['genre'] and row['num_segments'] == want['num_segments']
  for genre, p in want['probabilities'].items():
    assert row['probabilities'][genre] == pytest.approx(p, abs=1e-5)


@pytest.mark.slow
def test_main_serves_on_a_free_port_and_stops_on_ctrl_c(tiny_run_dir):
  """The command line: --port=0 prints the real address; Ctrl+C ends it cleanly."""
  process = subprocess.Popen(
      [sys.executable, 'main.py', '--mode=serve', f'--workdir={tiny_run_dir}', '--port=0'],
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    line = process.stdout.readline()
    assert 'Serving' in line and 'http://127.0.0.1:' in line, process.stderr.read()
    url = line.split(' on ')[1].split()[0]
    assert not url.endswith(':0/')
    health = get_json(url + 'healthz')
    assert health['status'] == 'ok' and health['max_upload_bytes'] == 200_000_000
    assert health['max_seconds'] == serve.DEFAULT_MAX_SECONDS
  finally:
    process.send_signal(signal.SIGINT)
    assert process.wait(30) == 0
  log = process.stderr.read()
  assert 'Done (serve)' in log and 'Traceback' not in log, log
