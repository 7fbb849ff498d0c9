"""One uploaded file, from a multipart request body into a temp file, within a byte limit.

The body is counted as it arrives, so an oversized upload is refused once
``limit`` bytes have come, not once it has all been received (what follows is
read and dropped, up to a bound, only so the client can read the refusal; a
declared Content-Length over the limit is refused before any of it is read).
The file lands in
the server's own temp folder under a name the server makes: the client's
file name is only a label (its extension kept when it looks like one, for the
decoders), so no request can name a path on the server's disk.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException
from starlette.formparsers import MultiPartParser
from starlette.requests import ClientDisconnect
from starlette.requests import Request

FIELD = 'file'
# Room for the multipart boundaries and part headers around the file's bytes.
_ENVELOPE_BYTES = 64 * 1024
_COPY_BYTES = 1 << 20
# Read and dropped after a refusal, at least: see _Body.discard.
_DISCARD_BYTES = 64 * 1000 * 1000
_EXTENSION = re.compile(r'\.[A-Za-z0-9]{1,6}$')


class UploadError(Exception):
  """An upload refused before decoding; ``status`` is the HTTP code, ``reason`` says why."""

  def __init__(self, status: int, reason: str):
    super().__init__(reason)
    self.status = status
    self.reason = reason


@dataclasses.dataclass(frozen=True)
class Upload:
  """The uploaded bytes at ``path`` (the server's temp file) and the client's label for them."""

  path: str
  filename: str
  size_bytes: int


def too_large(limit_bytes: int) -> UploadError:
  return UploadError(413, f'the upload is larger than this server accepts '
                     f'({limit_bytes / 1e6:g} MB, --max_upload_mb); send a smaller file or '
                     'restart the server with a larger --max_upload_mb.')


class _Body:
  """The request body as it arrives, counted, refused past ``limit`` bytes."""

  def __init__(self, request: Request, limit: int, refusal: UploadError):
    self._chunks = request.stream()
    self._limit = limit
    self._refusal = refusal
    self._expects_continue = '100-continue' in request.headers.get('expect', '').lower()
    self.seen = 0
    self.started = False

  async def chunks(self) -> AsyncIterator[bytes]:
    self.started = True
    async for chunk in self._chunks:
      self.seen += len(chunk)
      if self.seen > self._limit:
        raise self._refusal
      yield chunk

  async def discard(self, most: int) -> None:
    """Reads and drops what is left of the body (at most ``most`` bytes) after a refusal.

    A client that sends the whole body before reading (most HTTP libraries,
    browsers) would otherwise meet a reset connection instead of the answer
    saying why. A client that asked ``Expect: 100-continue`` (curl, for large
    files) and was refused before the body was read never sends it.
    """
    if self._expects_continue and not self.started:
      return
    try:
      async for chunk in self._chunks:
        most -= len(chunk)
        if most < 0:
          return
    except ClientDisconnect:
      return


def safe_suffix(filename: str) -> str:
  """The client's extension if it looks like one (``.mp3``), else none: a hint, never a path."""
  match = _EXTENSION.search(os.path.basename(filename.replace('\\', '/')))
  return match.group(0).lower() if match else ''


def label(filename: str | None) -> str:
  """The client's file name as shown in answers: its last component, printable, bounded."""
  name = os.path.basename((filename or '').replace('\\', '/'))
  name = ''.join(c for c in name if c.isprintable())[:200]
  return name or 'upload'


def _check_headers(request: Request, limit_bytes: int) -> None:
  """Refuses what the headers already show: not multipart, or a declared size over the limit."""
  content_type = request.headers.get('content-type', '')
  if not content_type.startswith('multipart/form-data'):
    raise UploadError(415, f'send the audio as multipart/form-data in the field "{FIELD}" '
                      f'(curl -F {FIELD}=@song.mp3 URL/api/predict); got content-type '
                      f'{content_type or "none"!r}.')
  length = request.headers.get('content-length')
  if length is not None and length.isdigit() and int(length) > limit_bytes + _ENVELOPE_BYTES:
    raise too_large(limit_bytes)


async def receive(request: Request, limit_bytes: int, folder: str) -> Upload:
  """The request's ``file`` part, written to a new temp file in ``folder``.

  Raises:
    UploadError: not multipart, no file part, an empty file, or more than
      ``limit_bytes`` (counted while reading; the rest of the body, up to
      ``max(limit_bytes, 64 MB)``, is then read and dropped so the client
      can read the answer).
  """
  body = _Body(request, limit_bytes + _ENVELOPE_BYTES, too_large(limit_bytes))
  try:
    return await _receive(request, body, limit_bytes, folder)
  except UploadError:
    await body.discard(max(limit_bytes, _DISCARD_BYTES))
    raise


async def _receive(request: Request, body: _Body, limit_bytes: int, folder: str) -> Upload:
  _check_headers(request, limit_bytes)
  parser = MultiPartParser(request.headers, body.chunks(), max_files=1, max_fields=16)
  try:
    form = await parser.parse()
  except MultiPartException as e:
    raise UploadError(400, f'the request body is not valid multipart/form-data ({e}).') from e
  except ClientDisconnect as e:
    raise UploadError(400, 'the client went away before the upload was complete.') from e
  try:
    part = form.get(FIELD)
    if not isinstance(part, UploadFile):
      raise UploadError(400, f'no file in the field "{FIELD}": send the audio as '
                        f'multipart/form-data (curl -F {FIELD}=@song.mp3 URL/api/predict).')
    # A 200 MB copy would stall every other request if it ran on the event loop.
    return await run_in_threadpool(_store, part, limit_bytes, folder)
  finally:
    await form.close()


def _store(part: UploadFile, limit_bytes: int, folder: str) -> Upload:
  """Copies the (spooled) part to a temp file of the server's own naming."""
  fd, path = tempfile.mkstemp(suffix=safe_suffix(part.filename or ''), dir=folder)
  try:
    with os.fdopen(fd, 'wb') as out:
      part.file.seek(0)
      shutil.copyfileobj(part.file, out, _COPY_BYTES)
      size = out.tell()
    if size > limit_bytes:
      raise too_large(limit_bytes)
    if size == 0:
      raise UploadError(400, 'empty file (0 bytes): pick an audio file.')
  except BaseException:
    os.remove(path)
    raise
  return Upload(path, label(part.filename), size)
