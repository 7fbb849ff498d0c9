"""Load test of ``--mode=serve`` (#32): N concurrent clients x M uploads, for a bounded time.

Run from the repository root:  python benchmarks/bench_serve.py  [--workdir=runs/x]

The server is the real command line (``python main.py --mode=serve --port=0``)
in its own process on 127.0.0.1; the clients are threads of this process, each
POSTing songs to ``/api/predict`` one after the other (a new connection per
upload, as a script with ``curl`` would) until it has sent --uploads or
--seconds have passed. One row per number of clients in --clients: requests/s
over the row's wall time, p50/p95 latency (upload sent to answer read), and
errors (any answer but 200, or no answer; 0 expected). The rows run one after
the other against the same server, after one warm-up request.

Without --workdir, configs/tiny.py is trained in a temp folder first (about
30 s): a tiny model at 8 kHz, so the rows measure the server (HTTP, upload,
decode, resample, queue) more than the model. The songs are synthetic
--song_seconds WAVs at 22.05 kHz, 16-bit mono.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

from absl import app
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import soundfile as sf  # noqa: E402

from benchmarks.peers import harness  # noqa: E402
from melgenre_jax.data import synthetic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_WORKDIR = flags.DEFINE_string('workdir', '', 'A trained workdir to serve (default: train '
                               'configs/tiny.py in a temp folder first).')
_CLIENTS = flags.DEFINE_list('clients', ['1', '4', '8'], 'Concurrent clients, one row each.')
_UPLOADS = flags.DEFINE_integer('uploads', 20, 'Uploads per client (M).')
_SECONDS = flags.DEFINE_float('seconds', 60.0, 'A row stops sending after this long.')
_SONG_SECONDS = flags.DEFINE_float('song_seconds', 30.0, 'Length of each uploaded song.')
_SONGS = flags.DEFINE_integer('songs', 4, 'Distinct songs the clients cycle through.')


def write_songs(folder: str) -> list[bytes]:
  """The songs as multipart bodies, built once (the clients then only send bytes)."""
  bodies = []
  for i, song in enumerate(synthetic.list_synthetic_songs(1)[:_SONGS.value]):
    path = os.path.join(folder, f'song{i}.wav')
    sf.write(path, synthetic.synthesize_song(song.key, 22050, _SONG_SECONDS.value), 22050,
             subtype='PCM_16')
    with open(path, 'rb') as f:
      bodies.append(f.read())
  return bodies


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
  boundary = uuid.uuid4().hex
  head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"'
          '\r\nContent-Type: audio/wav\r\n\r\n').encode()
  return head + data + f'\r\n--{boundary}--\r\n'.encode(), f'multipart/form-data; boundary={boundary}'


def upload(url: str, body: bytes, kind: str) -> tuple[float, int]:
  """One POST: (seconds from sending to the answer read, HTTP status; 0: no answer)."""
  request = urllib.request.Request(url + 'api/predict', data=body,
                                   headers={'Content-Type': kind}, method='POST')
  start = time.perf_counter()
  try:
    with urllib.request.urlopen(request, timeout=600) as response:
      response.read()
      status = response.status
  except urllib.error.HTTPError as e:
    status = e.code
  except OSError:
    status = 0
  return time.perf_counter() - start, status


def load_row(url: str, songs: list[tuple[bytes, str]], clients: int) -> dict[str, float]:
  """``clients`` threads, each sending up to --uploads songs within --seconds."""
  deadline = time.monotonic() + _SECONDS.value
  results: list[tuple[float, int]] = []
  lock = threading.Lock()

  def client(index: int) -> None:
    for k in range(_UPLOADS.value):
      if time.monotonic() >= deadline:
        return
      result = upload(url, *songs[(index + k) % len(songs)])
      with lock:
        results.append(result)

  start = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(clients) as pool:
    list(pool.map(client, range(clients)))
  wall = time.perf_counter() - start
  latencies = sorted(t for t, status in results if status == 200)
  p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))] if latencies else 0.0
  return {'clients': clients, 'requests': len(results), 'wall': wall,
          'rate': len(results) / wall, 'p50': statistics.median(latencies) if latencies else 0.0,
          'p95': p95, 'errors': sum(status != 200 for _, status in results)}


def train_tiny(folder: str) -> str:
  workdir = os.path.join(folder, 'tiny')
  subprocess.run([sys.executable, 'main.py', '--config', 'configs/tiny.py', '--workdir', workdir],
                 cwd=ROOT, check=True, capture_output=True)
  return workdir


@contextlib.contextmanager
def server(workdir: str, log_path: str):
  """``main.py --mode=serve --port=0`` in its own process; yields its printed address."""
  with open(log_path, 'w', encoding='utf-8') as log:
    process = subprocess.Popen(
        [sys.executable, 'main.py', '--mode=serve', f'--workdir={workdir}', '--port=0'],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=log, text=True)
    try:
      line = process.stdout.readline()
      if ' on http' not in line:
        raise RuntimeError(f'the server did not start; its log: {log_path}')
      yield line.split(' on ')[1].split()[0]
    finally:
      process.terminate()
      process.wait(60)


def main(argv):
  del argv
  with tempfile.TemporaryDirectory(prefix='bench_serve_') as folder:
    workdir = _WORKDIR.value or train_tiny(folder)
    songs = [multipart(data, f'song{i}.wav') for i, data in enumerate(write_songs(folder))]
    with server(workdir, os.path.join(folder, 'serve.log')) as url:
      warm, status = upload(url, *songs[0])
      assert status == 200, status
      rows = [load_row(url, songs, int(n)) for n in _CLIENTS.value]
  print()
  print(f'--mode=serve under load: {workdir if _WORKDIR.value else "configs/tiny.py (trained here)"}, '
        f'{_SONG_SECONDS.value:g} s WAV songs (22.05 kHz, 16-bit mono, '
        f'{len(songs[0][0]) / 1e6:.2f} MB), up to {_UPLOADS.value} uploads per client within '
        f'{_SECONDS.value:g} s; the first request after start took {warm:.2f} s')
  for line in harness.machine_lines():
    print(line)
  print()
  print('| clients | requests | requests/s | p50 latency (s) | p95 latency (s) | errors |')
  print('|---:|---:|---:|---:|---:|---:|')
  for r in rows:
    print(f"| {r['clients']} | {r['requests']} | {r['rate']:.2f} | {r['p50']:.3f} | "
          f"{r['p95']:.3f} | {r['errors']} |")
  print()
  best = max(rows, key=lambda r: r['rate'])
  print(f"SUMMARY: {best['rate']:.2f} requests/s at {best['clients']} clients (p95 "
        f"{best['p95']:.2f} s), {sum(r['errors'] for r in rows)} errors in "
        f"{sum(r['requests'] for r in rows)} requests.")


if __name__ == '__main__':
  app.run(main)
