"""TensorFlow V2 checkpoint bundles read with numpy: no TensorFlow, no protobuf.

A bundle is ``PREFIX.index`` and ``PREFIX.data-0000N-of-0000M``. The index is
a LevelDB-format table (sorted string keys, prefix-compressed blocks, a
48-byte footer ending in a magic number); the key ``''`` holds a
``BundleHeaderProto`` and every other key is a tensor name whose value is a
``BundleEntryProto`` (dtype, shape, shard, offset, size, masked crc32c). The
data files are the raw little-endian tensor bytes. Both formats are small and
documented (tensorflow/core/lib/io/table_format.md, tensor_bundle.proto), so
reading them here keeps TensorFlow out of the install, and checking every
tensor's crc32c means a damaged file is refused rather than imported.
"""

from __future__ import annotations

import dataclasses
import struct

import numpy as np

from melgenre_jax.errors import UserError

_TABLE_MAGIC = 0xdb4775248b80fb57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type (1 byte) + crc32c of the block (4 bytes)
_MASK_DELTA = 0xa282ead8
# tensorflow/core/framework/types.proto DataType -> numpy (little-endian).
_DTYPES = {1: '<f4', 2: '<f8', 3: '<i4', 4: 'u1', 5: '<i2', 6: 'i1', 9: '<i8', 10: '?',
           17: '<u2', 19: '<f2', 22: '<u4', 23: '<u8'}


class CheckpointError(UserError, ValueError):
  """A checkpoint bundle is damaged, foreign or uses a feature this reader lacks."""


@dataclasses.dataclass(frozen=True)
class Entry:
  """Where one tensor lives in the data shards (a decoded BundleEntryProto)."""

  dtype: int
  shape: tuple[int, ...]
  shard_id: int
  offset: int
  size: int
  crc32c: int | None


# ------------------------------------------------------------------ crc32c

def _crc_table() -> np.ndarray:
  poly = 0x82f63b78  # Castagnoli, reflected
  table = np.zeros(256, np.uint32)
  for i in range(256):
    c = i
    for _ in range(8):
      c = (c >> 1) ^ poly if c & 1 else c >> 1
    table[i] = c
  return table


_TABLE = _crc_table()
_TABLE_LIST = [int(v) for v in _TABLE]
_LANES = 1024  # chunks whose CRCs are computed side by side (vectorised over numpy)


def _crc_raw_serial(data: bytes | np.ndarray, crc: int) -> int:
  table = _TABLE_LIST
  for b in bytes(data):
    crc = table[(crc ^ b) & 0xff] ^ (crc >> 8)
  return crc


def _shift_matrix(length: int) -> list[int]:
  """Columns of the linear map 'run the CRC register over ``length`` zero bytes'."""
  cols = []
  for bit in range(32):
    cols.append(_crc_raw_serial(b'\0' * length, 1 << bit))
  return cols


def _apply(cols: list[int], x: int) -> int:
  out, bit = 0, 0
  while x:
    if x & 1:
      out ^= cols[bit]
    x >>= 1
    bit += 1
  return out


def crc32c(data: bytes | np.ndarray) -> int:
  """CRC-32C (Castagnoli) of ``data``.

  The register update is linear over GF(2), so the data is cut into equal
  chunks whose raw CRCs (zero start) run side by side as numpy lanes; they are
  then folded in order with the 'shift over one chunk of zeros' matrix. About
  a second for 10 MB in plain Python becomes a few tens of milliseconds.
  """
  buf = np.frombuffer(bytes(data), np.uint8) if not isinstance(data, np.ndarray) else \
      np.ascontiguousarray(data).reshape(-1).view(np.uint8)
  n = buf.size
  chunk = n // _LANES
  crc = 0xffffffff
  if chunk >= 64:
    lanes = buf[:chunk * _LANES].reshape(_LANES, chunk)
    regs = np.zeros(_LANES, np.uint32)
    for j in range(chunk):
      regs = _TABLE[(regs ^ lanes[:, j]) & 0xff] ^ (regs >> np.uint32(8))
    cols = _shift_matrix(chunk)
    for r in regs.tolist():
      crc = _apply(cols, crc) ^ r
    buf = buf[chunk * _LANES:]
  return _crc_raw_serial(buf.tobytes(), crc) ^ 0xffffffff


def masked_crc32c(data: bytes | np.ndarray) -> int:
  """The masked form TensorFlow stores (so a CRC of CRC-bearing data is not trivial)."""
  crc = crc32c(data)
  return ((((crc >> 15) | (crc << 17)) & 0xffffffff) + _MASK_DELTA) & 0xffffffff


# --------------------------------------------------------------- protobuf

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  result, shift = 0, 0
  while True:
    if pos >= len(buf):
      raise ValueError('truncated varint')
    b = buf[pos]
    pos += 1
    result |= (b & 0x7f) << shift
    if not b & 0x80:
      return result, pos
    shift += 7
    if shift > 63:
      raise ValueError('varint too long')


def _fields(buf: bytes) -> list[tuple[int, int, int | bytes]]:
  """Protobuf wire format -> [(field number, wire type, value)]."""
  out, pos = [], 0
  while pos < len(buf):
    tag, pos = _varint(buf, pos)
    number, wire = tag >> 3, tag & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 1:
      value, pos = struct.unpack_from('<Q', buf, pos)[0], pos + 8
    elif wire == 2:
      length, pos = _varint(buf, pos)
      value, pos = bytes(buf[pos:pos + length]), pos + length
      if pos > len(buf):
        raise ValueError('truncated field')
    elif wire == 5:
      value, pos = struct.unpack_from('<I', buf, pos)[0], pos + 4
    else:
      raise ValueError(f'unsupported wire type {wire}')
    out.append((number, wire, value))
  return out


def _shape(buf: bytes) -> tuple[int, ...]:
  dims = []
  for number, _, value in _fields(buf):
    if number == 2:  # TensorShapeProto.dim
      size = next((v for n, _, v in _fields(value) if n == 1), 0)
      dims.append(int(size))
    elif number == 3 and value:
      raise ValueError('unknown-rank shape')
  return tuple(dims)


def _entry(buf: bytes) -> Entry:
  fields = {}
  for number, _, value in _fields(buf):
    if number == 7:
      raise ValueError('sliced (partitioned) variables are not supported')
    fields[number] = value
  return Entry(dtype=int(fields.get(1, 0)), shape=_shape(fields.get(2, b'')),
               shard_id=int(fields.get(3, 0)), offset=int(fields.get(4, 0)),
               size=int(fields.get(5, 0)), crc32c=fields.get(6))


# ------------------------------------------------------------------ table

def _block(data: bytes, offset: int, size: int) -> bytes:
  end = offset + size + _BLOCK_TRAILER_BYTES
  if offset < 0 or end > len(data):
    raise ValueError(f'block at {offset} (+{size}) runs past the end of the index')
  kind = data[offset + size]
  if kind == 1:
    raise ValueError('snappy-compressed block (TensorFlow never writes these for bundles)')
  if kind != 0:
    raise ValueError(f'unknown block compression type {kind}')
  stored = struct.unpack_from('<I', data, offset + size + 1)[0]
  actual = masked_crc32c(data[offset:offset + size + 1])
  if stored != actual:
    raise ValueError(f'block at {offset} fails its crc32c')
  return data[offset:offset + size]


def _block_entries(block: bytes) -> list[tuple[bytes, bytes]]:
  """Prefix-compressed entries of one block, in order (restart points only re-anchor keys)."""
  if len(block) < 4:
    raise ValueError('block too short')
  num_restarts = struct.unpack_from('<I', block, len(block) - 4)[0]
  limit = len(block) - 4 - 4 * num_restarts
  if limit < 0:
    raise ValueError('bad restart array')
  entries, pos, key = [], 0, b''
  while pos < limit:
    shared, pos = _varint(block, pos)
    unshared, pos = _varint(block, pos)
    value_len, pos = _varint(block, pos)
    if shared > len(key) or pos + unshared + value_len > limit:
      raise ValueError('bad block entry')
    key = key[:shared] + block[pos:pos + unshared]
    pos += unshared
    entries.append((key, block[pos:pos + value_len]))
    pos += value_len
  return entries


def _table(data: bytes) -> list[tuple[bytes, bytes]]:
  if len(data) < _FOOTER_BYTES:
    raise ValueError('shorter than a table footer')
  footer = data[-_FOOTER_BYTES:]
  if struct.unpack_from('<Q', footer, 40)[0] != _TABLE_MAGIC:
    raise ValueError('no table magic number at the end (not a TensorFlow checkpoint index)')
  _, pos = _varint(footer, 0)  # metaindex handle (unused by bundles)
  _, pos = _varint(footer, pos)
  index_offset, pos = _varint(footer, pos)
  index_size, pos = _varint(footer, pos)
  out = []
  for _, handle in _block_entries(_block(data, index_offset, index_size)):
    offset, p = _varint(handle, 0)
    size, _ = _varint(handle, p)
    out.extend(_block_entries(_block(data, offset, size)))
  return out


# ----------------------------------------------------------------- public

def _fail(path: str, why: str) -> CheckpointError:
  return CheckpointError(
      f'{path}: {why}; this is not an intact TensorFlow V2 checkpoint bundle '
      '(fetch the checkpoint again, e.g. delete the cached wheel and rerun the import).')


def read_index(prefix: str) -> dict[str, Entry]:
  """Tensor name -> Entry from ``PREFIX.index`` (the header checked, nothing read from data)."""
  path = prefix + '.index'
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read the checkpoint index ({e.strerror}); '
                          'pass a checkpoint prefix whose .index file exists.') from e
  try:
    rows = _table(data)
    if not rows or rows[0][0] != b'':
      raise ValueError('no bundle header entry')
    header = dict((n, v) for n, _, v in _fields(rows[0][1]))
    if int(header.get(1, 1)) != 1:
      raise ValueError(f'{header.get(1)} shards (only single-shard bundles are supported)')
    if int(header.get(2, 0)) != 0:
      raise ValueError('big-endian bundle')
    return {k.decode('utf-8'): _entry(v) for k, v in rows[1:]}
  except (ValueError, struct.error, UnicodeDecodeError) as e:
    raise _fail(path, str(e)) from e


def read_bundle(prefix: str) -> dict[str, np.ndarray]:
  """Every tensor of the bundle at ``prefix``, each checked against its stored crc32c."""
  entries = read_index(prefix)
  path = prefix + '.data-00000-of-00001'
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError as e:
    raise CheckpointError(f'{path}: cannot read the checkpoint data ({e.strerror}); '
                          'a bundle needs its .data-00000-of-00001 beside the .index.') from e
  out = {}
  for name, e in entries.items():
    if e.dtype not in _DTYPES:
      raise _fail(path, f'tensor {name!r} has unsupported dtype enum {e.dtype}')
    dtype = np.dtype(_DTYPES[e.dtype])
    count = int(np.prod(e.shape, dtype=np.int64))
    if e.size != count * dtype.itemsize or e.offset + e.size > len(data):
      raise _fail(path, f'tensor {name!r} ({e.size} bytes at {e.offset}) does not fit the '
                  f'{len(data)}-byte data file or its shape {e.shape}')
    raw = data[e.offset:e.offset + e.size]
    if e.crc32c is not None and masked_crc32c(raw) != e.crc32c:
      raise _fail(path, f'tensor {name!r} fails its crc32c check')
    out[name] = np.frombuffer(raw, dtype).reshape(e.shape).astype(dtype.newbyteorder('='))
  return out


# ------------------------------------------------------- writer (for tests)

def _put_varint(n: int) -> bytes:
  out = bytearray()
  while True:
    b = n & 0x7f
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _put_field(number: int, wire: int, value: int | bytes) -> bytes:
  tag = _put_varint(number << 3 | wire)
  if wire == 0:
    return tag + _put_varint(int(value))
  if wire == 5:
    return tag + struct.pack('<I', value)
  return tag + _put_varint(len(value)) + value


def write_bundle(prefix: str, tensors: dict[str, np.ndarray], restart_interval: int = 3) -> None:
  """Writes a single-shard V2 bundle (uncompressed, one data block): the tests' fixture maker."""
  reverse = {np.dtype(v).str: k for k, v in _DTYPES.items()}
  data, rows, offset = bytearray(), [(b'', _put_field(1, 0, 1) + _put_field(3, 0, 1))], 0
  for name in sorted(tensors):
    arr = np.asarray(tensors[name])
    arr = arr.astype(arr.dtype.newbyteorder('<'), order='C')  # 0-d stays 0-d
    raw = arr.tobytes()
    shape = b''.join(_put_field(2, 2, _put_field(1, 0, d)) for d in arr.shape)
    value = (_put_field(1, 0, reverse[arr.dtype.str]) + _put_field(2, 2, shape)
             + _put_field(4, 0, offset) + _put_field(5, 0, len(raw))
             + _put_field(6, 5, masked_crc32c(raw)))
    rows.append((name.encode(), value))
    data += raw
    offset += len(raw)
  with open(prefix + '.data-00000-of-00001', 'wb') as f:
    f.write(bytes(data))
  block, restarts, prev = bytearray(), [], b''
  for i, (key, value) in enumerate(rows):
    shared = 0
    if i % restart_interval:
      while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
        shared += 1
    else:
      restarts.append(len(block))
    block += _put_varint(shared) + _put_varint(len(key) - shared) + _put_varint(len(value))
    block += key[shared:] + value
    prev = key
  block += b''.join(struct.pack('<I', r) for r in restarts) + struct.pack('<I', len(restarts))

  def framed(contents: bytes) -> bytes:
    return contents + b'\0' + struct.pack('<I', masked_crc32c(contents + b'\0'))

  out = bytearray(framed(bytes(block)))
  data_handle = _put_varint(0) + _put_varint(len(block))
  meta_offset = len(out)
  out += framed(struct.pack('<I', 0))  # empty metaindex block: no entries, zero restarts
  last_key = rows[-1][0]  # an index key is >= every key of its block
  index = (_put_varint(0) + _put_varint(len(last_key)) + _put_varint(len(data_handle)) + last_key
           + data_handle + struct.pack('<I', 0) + struct.pack('<I', 1))
  index_offset = len(out)
  out += framed(index)
  footer = (_put_varint(meta_offset) + _put_varint(4) + _put_varint(index_offset)
            + _put_varint(len(index)))
  out += footer + b'\0' * (40 - len(footer)) + struct.pack('<Q', _TABLE_MAGIC)
  with open(prefix + '.index', 'wb') as f:
    f.write(bytes(out))
