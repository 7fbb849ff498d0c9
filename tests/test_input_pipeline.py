"""load_dataset end to end, the grain train loader (resume, shards) and eval batches."""

import json
import os
import pathlib

import numpy as np
import pytest
import soundfile as sf

from configs import default
from melgenre_jax.data import gtzan
from melgenre_jax.data import input_pipeline as ip
from melgenre_jax.data.songs import Song

ROOT = pathlib.Path(__file__).resolve().parents[1]
SR = 8000


def _config(**data):
  config = default.get_config()
  config.audio.sample_rate = SR
  config.audio.segment_seconds = 0.5
  config.audio.segment_hop_seconds = 0.5
  config.data.min_song_seconds = 0.25
  config.data.cache_workers = 0
  config.progress_bar = False
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


def _write(path, seconds=1.0, freq=300.0):
  path.parent.mkdir(parents=True, exist_ok=True)
  t = np.arange(int(seconds * SR)) / SR
  sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32),
           SR)


def _corrupt(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b'RIFF\x00\x00garbage' * 30)


def _check_consistent(ds):
  for s in (ds.train, ds.validation, ds.test):
    if s is None:
      continue
    assert s.inputs.shape[0] == len(s) == s.song_index.shape[0]
    assert s.labels.dtype == np.int32 and s.song_index.dtype == np.int32
    for label, idx in zip(s.labels, s.song_index):
      assert ds.genres[label] == s.songs[idx].genre


# ------------------------------------------------------------ load_dataset


def test_load_folder_dataset(tmp_path):
  root = tmp_path / 'music'
  for g in ('jazz', 'rock'):
    for i in range(10):
      _write(root / g / f'{i:02d}.wav', 1.0, 200 + 50 * i)
  _corrupt(root / 'rock' / 'broken.wav')
  workdir = tmp_path / 'work'
  ds = ip.load_dataset(_config(source='folder', root=str(root),
                               max_bad_fraction=0.2), str(workdir))
  assert ds.genres == ['jazz', 'rock']
  assert (len(ds.train.songs), len(ds.validation.songs), len(ds.test.songs)) \
      == (14, 4, 2)
  assert (len(ds.train), len(ds.validation), len(ds.test)) == (28, 8, 4)
  _check_consistent(ds)
  keys = [{s.key for s in x.songs} for x in (ds.train, ds.validation,
                                              ds.test)]
  assert not (keys[0] & keys[1] or keys[0] & keys[2] or keys[1] & keys[2])
  assert isinstance(ds.train.inputs, np.memmap)
  with open(workdir / 'data_summary.json') as f:
    summary = json.load(f)
  assert summary['bad_files'][0]['key'] == 'rock/broken.wav'
  assert summary['split']['train']['per_genre']['rock'] == {'songs': 7,
                                                            'segments': 14}
  assert os.path.isfile(os.path.join(summary['cache'], 'summary.json'))
  again = ip.load_dataset(_config(source='folder', root=str(root),
                                  max_bad_fraction=0.2), str(workdir))
  assert again.summary['cache_reused']
  np.testing.assert_array_equal(again.train.inputs, ds.train.inputs)


def test_empty_genre_fails_clearly(tmp_path):
  root = tmp_path / 'music'
  for i in range(3):
    _write(root / 'jazz' / f'{i}.wav')
  _corrupt(root / 'blues' / 'only.wav')
  with pytest.raises(ValueError, match="genre 'blues' has no usable songs"):
    ip.load_dataset(_config(source='folder', root=str(root),
                            max_bad_fraction=0.5), str(tmp_path / 'work'))
  with open(tmp_path / 'work' / 'data_summary.json') as f:
    assert 'blues' in json.load(f)['error']


def test_too_many_bad_files_fail_clearly(tmp_path):
  root = tmp_path / 'music'
  for g in ('jazz', 'rock'):
    for i in range(3):
      _write(root / g / f'{i}.wav')
    _corrupt(root / g / 'bad.wav')
  with pytest.raises(ValueError, match=r'2 of 8 files \(25.0%\).*'
                     'max_bad_fraction=0.1'):
    ip.load_dataset(_config(source='folder', root=str(root)),
                    str(tmp_path / 'work'))


def test_gtzan_fault_filtered_end_to_end(tmp_path):
  lists = {side: [k for k, _ in gtzan.read_gtzan_list(rel)]
           for side, rel in gtzan._GTZAN_LISTS['gtzan_fault_filtered'].items()}
  want = {}
  base = tmp_path / 'gtzan' / 'Data' / 'genres_original'  # Kaggle layout
  for side, names in lists.items():
    for g in gtzan.GTZAN_GENRES:
      name = next(n for n in names if n.startswith(g + '.'))
      _write(base / g / f'{name}.wav', 0.6, freq=210.5 + 5 * len(want))  # no two alike
      want[name] = side
  listed = set().union(*lists.values())
  unlisted = next(f'{g}.{i:05d}' for g in gtzan.GTZAN_GENRES
                  for i in range(100) if f'{g}.{i:05d}' not in listed)
  _write(base / unlisted.split('.')[0] / f'{unlisted}.wav', 0.6)  # left out
  jazz_train = [n for n in lists['train'] if n.startswith('jazz.')]
  _corrupt(base / 'jazz' / f'{jazz_train[1]}.wav')  # listed but unreadable
  ds = ip.load_dataset(_config(source='gtzan', root=str(tmp_path / 'gtzan'),
                               split='gtzan_fault_filtered'),
                       str(tmp_path / 'work'))
  assert ds.genres == list(gtzan.GTZAN_GENRES)
  got = {s.key: side for side, x in (('train', ds.train),
                                     ('validation', ds.validation),
                                     ('test', ds.test)) for s in x.songs}
  assert got == want
  assert ds.summary['num_bad'] == 1
  assert jazz_train[1] in ds.summary['split']['missing_listed']['train']
  assert ds.summary['split']['num_excluded_unlisted'] == 1
  _check_consistent(ds)


def test_segment_random_leaks_by_design(tmp_path):
  root = tmp_path / 'music'
  for g in ('jazz', 'rock'):
    for i in range(4):
      _write(root / g / f'{i}.wav', 2.0)
  ds = ip.load_dataset(_config(source='folder', root=str(root),
                               split='segment_random'), str(tmp_path / 'w'))
  assert ds.summary['split']['leaky']
  assert len(ds.train) + len(ds.validation) + len(ds.test) == 32
  train_songs = {ds.train.songs[i].key for i in ds.train.song_index}
  val_songs = {ds.validation.songs[i].key for i in ds.validation.song_index}
  assert train_songs & val_songs  # the leak it exists to measure
  _check_consistent(ds)


# ------------------------------------------------------------ train loader


def _toy(n=50, width=3):
  """Segment i has inputs filled with i, so batches show which rows they hold."""
  inputs = np.repeat(np.arange(n, dtype=np.float32)[:, None], width, axis=1)
  return ip.SegmentSet(inputs=inputs, labels=(np.arange(n) % 4).astype(
      np.int32), song_index=(np.arange(n) // 2).astype(np.int32),
                       songs=[Song(f's{i}', '', 'g') for i in range(n // 2)])


def _ids(batch):
  return batch['inputs'][:, 0].astype(int).tolist()


def _take(it, k):
  return [_ids(next(it)) for _ in range(k)]


def test_train_batches_epochs_and_determinism():
  toy = _toy()
  loader = ip.create_train_loader(toy, global_batch_size=8, seed=3,
                                  worker_count=0)
  it = iter(loader)
  first = next(it)
  assert first['inputs'].shape == (8, 3) and first['inputs'].dtype == np.float32
  assert first['label'].dtype == np.int32 and first['song'].dtype == np.int32
  np.testing.assert_array_equal(first['label'], toy.labels[_ids(first)])
  np.testing.assert_array_equal(first['song'], toy.song_index[_ids(first)])
  steps = ip.steps_per_epoch(len(toy), 8)
  assert steps == 6
  epoch0 = [_ids(first)] + _take(it, steps - 1)
  epoch1 = _take(it, steps)
  for epoch in (epoch0, epoch1):
    flat = sum(epoch, [])
    assert len(set(flat)) == 48  # each record at most once, 2 dropped
  assert epoch0 != epoch1  # reshuffled per epoch
  again = iter(ip.create_train_loader(toy, global_batch_size=8, seed=3,
                                      worker_count=0))
  assert _take(again, 2 * steps) == epoch0 + epoch1
  other = iter(ip.create_train_loader(toy, global_batch_size=8, seed=4,
                                      worker_count=0))
  assert _take(other, steps) != epoch0


def test_resume_mid_epoch_gives_the_next_batches():
  toy = _toy()
  it = iter(ip.create_train_loader(toy, global_batch_size=8, seed=0,
                                   worker_count=0))
  _take(it, 4)  # mid-epoch 0
  state = it.get_state()
  assert isinstance(state, bytes)
  expected = _take(it, 5)  # crosses into epoch 1
  fresh = iter(ip.create_train_loader(toy, global_batch_size=8, seed=0,
                                      worker_count=0))
  fresh.set_state(state)
  assert _take(fresh, 5) == expected


def test_resume_through_orbax_checkpoint(tmp_path):
  import orbax.checkpoint as ocp
  toy = _toy()
  it = iter(ip.create_train_loader(toy, global_batch_size=8, seed=0,
                                   worker_count=0))
  _take(it, 3)
  import grain
  handlers = {'data': grain.checkpoint.CheckpointHandler()}
  with ocp.CheckpointManager(tmp_path / 'ckpt',
                             item_handlers=handlers) as mngr:
    mngr.save(3, args=ocp.args.Composite(data=ip.checkpoint_save_args(it)))
    mngr.wait_until_finished()
  expected = _take(it, 4)
  fresh = iter(ip.create_train_loader(toy, global_batch_size=8, seed=0,
                                      worker_count=0))
  with ocp.CheckpointManager(tmp_path / 'ckpt',
                             item_handlers=handlers) as mngr:
    mngr.restore(3, args=ocp.args.Composite(
        data=ip.checkpoint_restore_args(fresh)))
  assert _take(fresh, 4) == expected


def test_process_shards_are_disjoint_parts_of_each_global_batch():
  toy = _toy()
  single = _take(iter(ip.create_train_loader(toy, global_batch_size=8,
                                             seed=1, worker_count=0)), 6)
  shards = []
  for p in range(2):
    loader = ip.create_train_loader(toy, global_batch_size=8, seed=1,
                                    worker_count=0, process_index=p,
                                    process_count=2)
    it = iter(loader)
    batch = next(it)
    assert batch['inputs'].shape == (4, 3)
    shards.append([_ids(batch)] + _take(it, 5))
  for step in range(6):
    a, b = shards[0][step], shards[1][step]
    assert not set(a) & set(b)
    assert sorted(a + b) == sorted(single[step])
  with pytest.raises(ValueError, match='divisible'):
    ip.create_train_loader(toy, global_batch_size=9, seed=1, worker_count=0,
                           process_count=2)


@pytest.mark.slow
def test_worker_processes_with_memmapped_split(tmp_path):
  root = tmp_path / 'music'
  for g in ('jazz', 'rock'):
    for i in range(5):
      _write(root / g / f'{i}.wav', 1.0, 200 + 40 * i)
  ds = ip.load_dataset(_config(source='folder', root=str(root)),
                       str(tmp_path / 'w'))
  assert isinstance(ds.train.inputs, np.memmap)
  kwargs = dict(global_batch_size=4, seed=0)
  in_proc = iter(ip.create_train_loader(ds.train, worker_count=0, **kwargs))
  want = [next(in_proc) for _ in range(5)]
  # One spawned grain worker (slow to start: it imports grain and JAX), so
  # the source and sampler must pickle and reopen the memmap by file name.
  it = iter(ip.create_train_loader(ds.train, worker_count=1, **kwargs))
  got = [next(it) for _ in range(2)]
  state = it.get_state()
  got += [next(it) for _ in range(3)]
  for w, g in zip(want, got):
    np.testing.assert_array_equal(w['inputs'], g['inputs'])
    np.testing.assert_array_equal(w['song'], g['song'])
  it.set_state(state)  # rewinds the worker stream to the saved position
  for w in want[2:]:
    np.testing.assert_array_equal(next(it)['inputs'], w['inputs'])


# ------------------------------------------------------------- evaluation


def test_eval_batches_cover_every_segment_once():
  toy = _toy(n=50)
  batches = list(ip.eval_batches(toy, 16))
  assert len(batches) == 4
  assert all(b['inputs'].shape == (16, 3) for b in batches)
  assert batches[-1]['mask'].tolist() == [True] * 2 + [False] * 14
  ids = np.concatenate([b['inputs'][b['mask'], 0] for b in batches])
  np.testing.assert_array_equal(ids, np.arange(50))
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  np.testing.assert_array_equal(labels, toy.labels)
  songs = np.concatenate([b['song'][b['mask']] for b in batches])
  np.testing.assert_array_equal(songs, toy.song_index)
  assert len(list(ip.eval_batches(_toy(n=32), 16))) == 2
  unthreaded = list(ip.eval_batches(toy, 16, prefetch=0))
  for a, b in zip(batches, unthreaded):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])


def test_steps_per_epoch():
  assert ip.steps_per_epoch(100, 32) == 3
  assert ip.steps_per_epoch(32, 32) == 1
  with pytest.raises(ValueError, match='fewer than one batch'):
    ip.steps_per_epoch(31, 32)


def _song_rows(lengths, seg, hop):
  """Songs 0..n-1 as ramps (value = song * 1e4 + sample), cut into grid rows."""
  rows, songs, audio = [], [], []
  for s, n in enumerate(lengths):
    wave = (s * 1e4 + np.arange(n)).astype(np.float32)
    audio.append(wave)
    for p in range(1 + (n - seg) // hop):
      rows.append(wave[p * hop:p * hop + seg])
      songs.append(s)
  return np.stack(rows), np.array(songs, np.int32), audio


@pytest.mark.parametrize('seg,hop', [(10, 10), (10, 4)])
def test_shifted_windows_are_real_audio_of_the_same_song(seg, hop):
  rows, songs, audio = _song_rows([37, 10, 25], seg, hop)
  position, count = ip.song_positions(songs)
  rng = np.random.default_rng(0)
  for _ in range(20):
    shifts = rng.integers(-(hop // 2), hop - hop // 2, size=len(rows))
    idx = rng.permutation(len(rows))[:6]
    out = ip.shifted_windows(rows, idx, shifts, position, count, hop)
    for o, i in zip(out, idx):
      s = songs[i]
      start = int(o[0] - s * 1e4)
      np.testing.assert_array_equal(o, audio[s][start:start + seg])  # contiguous, same song
      assert 0 <= start <= (count[i] - 1) * hop
      assert abs(start - position[i] * hop) <= hop // 2 or start in (0, (count[i] - 1) * hop)


def test_random_offsets_move_each_epoch_and_resume_exactly():
  rows, songs, audio = _song_rows([90, 60, 120, 45], 10, 10)
  toy = ip.SegmentSet(inputs=rows, labels=(songs % 2).astype(np.int32),
                      song_index=songs, songs=[])
  make = lambda: iter(ip.create_train_loader(  # noqa: E731
      toy, global_batch_size=4, seed=1, worker_count=0, shift_hop=10))
  it = make()
  steps = ip.steps_per_epoch(len(toy), 4)
  epochs = [[next(it) for _ in range(steps)] for _ in range(2)]
  starts = [{int(r[0]) for b in e for r in b['inputs']} for e in epochs]
  assert len(starts[0] - {int(r[0]) for r in rows}) > 0  # off the grid
  assert starts[0] != starts[1]  # fresh shifts each epoch
  for b in epochs[0]:  # labels and songs still match the windows' songs
    np.testing.assert_array_equal(b['song'], (b['inputs'][:, 0] // 1e4).astype(np.int32))
  it = make()
  for _ in range(steps - 2):
    next(it)
  state = it.get_state()
  expected = [next(it)['inputs'] for _ in range(4)]
  fresh = make()
  fresh.set_state(state)
  for e in expected:
    np.testing.assert_array_equal(next(fresh)['inputs'], e)
  grid = iter(ip.create_train_loader(toy, global_batch_size=4, seed=1, worker_count=0))
  with pytest.raises(Exception):  # a grid loader refuses a shifted loader's state
    grid.set_state(state)


def test_random_offsets_refuse_feature_rows():
  toy = ip.SegmentSet(inputs=np.zeros((8, 5, 3), np.float32), labels=np.zeros(8, np.int32),
                      song_index=np.zeros(8, np.int32), songs=[])
  with pytest.raises(ValueError, match='features.where=device'):
    ip.create_train_loader(toy, global_batch_size=4, seed=0, worker_count=0, shift_hop=5)
