"""Genre tag write-back (predict --write_tags): real files of each format, read back with mutagen."""

import errno
import hashlib
import os

import av
import mutagen
import numpy as np
import pytest
import soundfile as sf
from mutagen.flac import FLAC
from mutagen.id3 import ID3
from mutagen.id3 import TCON
from mutagen.id3 import TIT2
from mutagen.mp4 import MP4
from mutagen.wave import WAVE

from melgenre_jax.errors import UserError
from melgenre_jax.modes.predict import genre_tags

SR = 22050
FORMATS = ('mp3', 'flac', 'ogg', 'opus', 'm4a')
_SF_ARGS = {'mp3': {}, 'flac': {}, 'ogg': {'format': 'OGG', 'subtype': 'VORBIS'},
            'opus': {'format': 'OGG', 'subtype': 'OPUS'}, 'wav': {}}


def _sine(n: int, sr: int) -> np.ndarray:
  return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / sr)).astype(np.float32)


def make_audio(folder, name: str, fmt: str | None = None) -> str:
  """One second of a sine in format ``fmt`` (default: the extension), titled 'T' by 'A'."""
  path = str(folder / name)
  fmt = fmt or name.rsplit('.', 1)[1]
  if fmt == 'm4a':
    with av.open(path, 'w', format='mp4') as c:
      c.metadata['title'], c.metadata['artist'] = 'T', 'A'
      stream = c.add_stream('aac', rate=44100)
      frame = av.AudioFrame.from_ndarray(_sine(44100, 44100)[None], format='fltp', layout='mono')
      frame.sample_rate, frame.pts = 44100, 0
      for packet in [*stream.encode(frame), *stream.encode(None)]:
        c.mux(packet)
    return path
  sr = 48000 if fmt == 'opus' else SR
  with sf.SoundFile(path, 'w', sr, 1, **_SF_ARGS[fmt]) as f:
    if fmt != 'wav':
      f.title, f.artist = 'T', 'A'  # Tags another tool wrote: they must survive.
    f.write(_sine(sr, sr))
  return path


def decoded_samples(path: str) -> int:
  """Samples a decoder gets out of the file: proves the audio still decodes."""
  try:
    return len(sf.read(path, dtype='float32')[0])
  except sf.LibsndfileError:
    with av.open(path) as c:
      return sum(frame.samples for frame in c.decode(audio=0))


def raw_tags(path: str) -> dict[str, list[str]]:
  """Genre, title and artist as mutagen itself reads them, independent of genre_tags.py."""
  f = mutagen.File(path)
  if isinstance(f.tags, ID3):
    keys = {'genre': 'TCON', 'title': 'TIT2', 'artist': 'TPE1'}
    return {k: list(f.tags[v].text) for k, v in keys.items() if v in f.tags}
  if isinstance(f, MP4):
    keys = {'genre': '\xa9gen', 'title': '\xa9nam', 'artist': '\xa9ART'}
    return {k: list(f.tags[v]) for k, v in keys.items() if v in f.tags}
  return {k: list(f.tags[k]) for k in ('genre', 'title', 'artist') if k in f.tags}


def fingerprint(paths) -> dict[str, tuple[str, int]]:
  return {p: (hashlib.sha256(open(p, 'rb').read()).hexdigest(), os.stat(p).st_mtime_ns)
          for p in paths}


def leftovers(folder) -> list[str]:
  return [n for n in os.listdir(folder) if n.endswith('.tagging')]


@pytest.mark.parametrize('fmt', FORMATS)
def test_write_genre_round_trip_keeps_other_tags_and_audio(tmp_path, fmt):
  path = make_audio(tmp_path, f'song.{fmt}')
  samples = decoded_samples(path)
  assert genre_tags.read_genre(path) is None

  genre_tags.write_genre(path, 'rock')
  assert raw_tags(path) == {'genre': ['rock'], 'title': ['T'], 'artist': ['A']}
  assert genre_tags.read_genre(path) == 'rock'
  assert decoded_samples(path) == samples

  genre_tags.write_genre(path, 'jazz')  # Replaces, never appends a second genre.
  assert raw_tags(path) == {'genre': ['jazz'], 'title': ['T'], 'artist': ['A']}
  assert decoded_samples(path) == samples
  assert not leftovers(tmp_path)


def test_every_existing_genre_value_is_replaced(tmp_path):
  flac = make_audio(tmp_path, 'a.flac')
  f = FLAC(flac)
  f.tags['genre'] = ['Pop', 'Dance']
  f.save()
  m4a = make_audio(tmp_path, 'a.m4a')
  f = MP4(m4a)
  f.tags['\xa9gen'] = ['Rock', 'Blues']
  f.save()
  assert genre_tags.read_genre(flac) == 'Pop; Dance'
  assert genre_tags.read_genre(m4a) == 'Rock; Blues'

  genre_tags.write_genre(flac, 'metal')
  genre_tags.write_genre(m4a, 'metal')
  assert FLAC(flac).tags['GENRE'] == ['metal']
  assert MP4(m4a).tags['\xa9gen'] == ['metal']


def test_id3_version_is_kept(tmp_path):
  path = make_audio(tmp_path, 'old.mp3')
  f = mutagen.File(path)
  f.save(v2_version=3)
  assert ID3(path).version == (2, 3, 0)
  genre_tags.write_genre(path, 'blues')
  assert ID3(path).version == (2, 3, 0)
  assert ID3(path)['TCON'].text == ['blues'] and ID3(path)['TIT2'].text == ['T']


def test_format_is_detected_by_content_not_extension(tmp_path):
  path = make_audio(tmp_path, 'really_ogg.flac', fmt='ogg')
  samples = decoded_samples(path)
  with pytest.raises(mutagen.MutagenError):
    mutagen.File(path)  # Going by the extension, mutagen alone tries FLAC and fails.
  genre_tags.write_genre(path, 'disco')
  assert mutagen.File(path, options=[mutagen.oggvorbis.OggVorbis])['GENRE'] == ['disco']
  assert decoded_samples(path) == samples


def test_wav_tagged_only_through_an_existing_id3_chunk(tmp_path):
  plain = make_audio(tmp_path, 'plain.wav')
  with pytest.raises(genre_tags.TagError, match='unsupported format: WAVE.*convert it to FLAC'):
    genre_tags.write_genre(plain, 'rock')
  chunked = make_audio(tmp_path, 'chunk.wav')
  f = WAVE(chunked)
  f.add_tags()
  f.tags.add(TIT2(encoding=3, text=['T']))
  f.save()
  genre_tags.write_genre(chunked, 'rock')
  assert WAVE(chunked).tags['TCON'].text == ['rock'] and WAVE(chunked).tags['TIT2'].text == ['T']
  assert decoded_samples(chunked) == SR


def _results(tmp_path):
  """Predict-style results over every case plan must tell apart."""
  new = make_audio(tmp_path, 'new.mp3')
  same = make_audio(tmp_path, 'same.flac')
  f = FLAC(same)
  f.tags['GENRE'] = ['Rock']
  f.save()
  skipped = make_audio(tmp_path, 'short.ogg')
  unsure = make_audio(tmp_path, 'unsure.m4a')
  wav = make_audio(tmp_path, 'plain.wav')
  corrupt = str(tmp_path / 'corrupt.mp3')
  with open(corrupt, 'wb') as fobj:
    fobj.write(b'ID3' + np.random.default_rng(0).bytes(2000))  # Seeded: never flaky.
  text = str(tmp_path / 'notes.txt')
  with open(text, 'w') as fobj:
    fobj.write('not audio at all\n' * 20)
  fake = str(tmp_path / 'fake.flac')
  with open(fake, 'w') as fobj:
    fobj.write('not audio either\n' * 20)
  results = [
      {'path': new, 'ok': True, 'reason': None, 'genre': 'rock', 'uncertain': False},
      {'path': same, 'ok': True, 'reason': None, 'genre': 'rock'},
      {'path': skipped, 'ok': False, 'reason': 'too short (0.2 s)'},
      {'path': unsure, 'ok': True, 'reason': None, 'genre': 'jazz', 'uncertain': True},
      {'path': wav, 'ok': True, 'reason': None, 'genre': 'pop'},
      {'path': corrupt, 'ok': True, 'reason': None, 'genre': 'pop'},
      {'path': text, 'ok': True, 'reason': None, 'genre': 'pop'},
      {'path': fake, 'ok': True, 'reason': None, 'genre': 'pop'},
  ]
  return results, [r['path'] for r in results]


def test_dry_run_plans_without_touching_any_file(tmp_path):
  results, paths = _results(tmp_path)
  before = fingerprint(paths)

  actions = genre_tags.plan(results)
  listing = genre_tags.format_actions(actions, applied=False)

  assert fingerprint(paths) == before
  got = {os.path.basename(a.path): (a.action, a.old_genre, a.reason) for a in actions}
  assert got['new.mp3'] == ('write', None, None)
  assert got['same.flac'] == ('unchanged', 'Rock', None)  # Case alone is no reason to rewrite.
  assert got['short.ogg'] == ('skip', None, 'skipped: too short (0.2 s)')
  assert got['unsure.m4a'] == ('skip', None, 'uncertain')
  assert got['plain.wav'][0] == 'skip' and got['plain.wav'][2].startswith('unsupported format: WAVE')
  assert got['corrupt.mp3'][0] == 'skip' and 'corrupt' in got['corrupt.mp3'][2]
  assert got['notes.txt'][0] == 'skip' and got['notes.txt'][2].startswith('unsupported format')
  assert got['fake.flac'][0] == 'skip' and 'corrupt or not an audio file' in got['fake.flac'][2]
  assert "would write 'rock' (had no genre)" in listing
  assert '1 to write, 1 unchanged, 6 not tagged.' in listing
  assert listing.splitlines()[-1] == 'To write these tags, run the same command with --write_tags=apply.'


def test_apply_writes_only_planned_files_and_goes_on_after_a_failure(tmp_path):
  results, paths = _results(tmp_path)
  extra = make_audio(tmp_path, 'extra.ogg')
  results.append({'path': extra, 'ok': True, 'reason': None, 'genre': 'blues'})
  actions = genre_tags.plan(results)
  os.chmod(paths[0], 0o444)  # Made read-only between the dry run and apply.
  untouched = fingerprint(paths)

  done = genre_tags.apply(actions)

  by_name = {os.path.basename(a.path): a for a in done}
  assert by_name['new.mp3'].action == 'failed' and 'read-only' in by_name['new.mp3'].reason
  assert by_name['extra.ogg'].action == 'write' and raw_tags(extra)['genre'] == ['blues']
  assert fingerprint(paths) == untouched  # Failed, skipped, uncertain, unchanged: all intact.
  listing = genre_tags.format_actions(done, applied=True)
  assert f"{extra}: wrote 'blues' (had no genre)" in listing
  assert f'{paths[0]}: FAILED - the file is read-only' in listing
  assert '1 written, 1 unchanged, 6 not tagged, 1 failed.' in listing
  assert '--write_tags=apply' in listing.splitlines()[-1]
  assert not leftovers(tmp_path)


def test_read_only_file_fails_cleanly(tmp_path):
  path = make_audio(tmp_path, 'locked.flac')
  os.chmod(path, 0o444)
  before = fingerprint([path])
  with pytest.raises(genre_tags.TagError,
                     match=r'locked.flac: the file is read-only.*chmod u\+w') as e:
    genre_tags.write_genre(path, 'rock')
  assert isinstance(e.value, UserError)
  assert fingerprint([path]) == before
  [action] = genre_tags.plan([{'path': path, 'ok': True, 'reason': None, 'genre': 'rock'}])
  assert action.action == 'skip' and 'read-only' in action.reason


def test_failure_mid_write_leaves_the_original_byte_identical(tmp_path, monkeypatch):
  path = make_audio(tmp_path, 'song.flac')
  before = fingerprint([path])

  def save_half_then_disk_full(self, *args, **kwargs):
    with open(self.filename, 'r+b') as f:  # What an in-place writer would leave behind.
      f.truncate(100)
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(FLAC, 'save', save_half_then_disk_full)
  with pytest.raises(genre_tags.TagError, match='disk full .*the file is unchanged'):
    genre_tags.write_genre(path, 'rock')
  assert fingerprint([path]) == before
  assert not leftovers(tmp_path)


def test_symlink_tags_its_target_and_stays_a_link(tmp_path):
  target = make_audio(tmp_path, 'target.mp3')
  link = str(tmp_path / 'link.mp3')
  os.symlink(target, link)
  genre_tags.write_genre(link, 'reggae')
  assert os.path.islink(link)
  assert ID3(target)['TCON'].text == ['reggae']


def test_nothing_to_write_still_names_the_apply_flag(tmp_path):
  path = make_audio(tmp_path, 'a.mp3')
  genre_tags.write_genre(path, 'pop')
  actions, listing = genre_tags.tag_results(
      [{'path': path, 'ok': True, 'reason': None, 'genre': 'pop'}], apply_writes=True)
  assert [a.action for a in actions] == ['unchanged']
  actions, listing = genre_tags.tag_results(
      [{'path': path, 'ok': True, 'reason': None, 'genre': 'pop'}], apply_writes=False)
  assert listing.splitlines()[-1] == 'No tag would change; --write_tags=apply has nothing to write.'
  assert isinstance(ID3(path)['TCON'], TCON)


def test_a_write_that_damages_the_file_silently_is_caught_before_replacing(tmp_path, monkeypatch):
  path = make_audio(tmp_path, 'song.ogg')
  before = fingerprint([path])
  real_save = mutagen.oggvorbis.OggVorbis.save

  def save_then_damage(self, *args, **kwargs):
    real_save(self, *args, **kwargs)
    with open(self.filename, 'r+b') as f:  # A "successful" save that left a broken file.
      f.truncate(60)

  monkeypatch.setattr(mutagen.oggvorbis.OggVorbis, 'save', save_then_damage)
  [action] = genre_tags.apply([genre_tags.TagAction(path, None, 'rock', 'write')])
  assert action.action == 'failed' and 'did not read back' in action.reason
  assert fingerprint([path]) == before
  assert not leftovers(tmp_path)


def test_the_tagged_copy_is_written_next_to_the_file_it_replaces(tmp_path, monkeypatch):
  music, links = tmp_path / 'music', tmp_path / 'links'
  music.mkdir()
  links.mkdir()
  target = make_audio(music, 'song.flac')
  link = str(links / 'song.flac')
  os.symlink(target, link)
  saved = []
  real_save = FLAC.save

  def recording_save(self, *args, **kwargs):
    saved.append(self.filename)
    real_save(self, *args, **kwargs)

  monkeypatch.setattr(FLAC, 'save', recording_save)
  genre_tags.write_genre(link, 'blues')
  # The target's folder (one file system: the rename is atomic), never the link's.
  assert [os.path.dirname(p) for p in saved] == [str(music)]
  assert saved[0].endswith('.tagging') and FLAC(target)['genre'] == ['blues']
  assert not leftovers(music) and not leftovers(links)


def test_keep_leaves_every_genre_already_set_and_writes_the_rest(tmp_path):
  results, paths = _results(tmp_path)
  set_mp3 = make_audio(tmp_path, 'set.mp3')
  f = mutagen.File(set_mp3)
  f.tags.add(TCON(encoding=3, text=['Chanson']))
  f.save()
  results.append({'path': set_mp3, 'ok': True, 'reason': None, 'genre': 'rock'})
  before = fingerprint(paths[1:] + [set_mp3])

  actions, listing = genre_tags.tag_results(results, apply_writes=True, keep_existing=True)

  got = {os.path.basename(a.path): (a.action, a.old_genre) for a in actions}
  assert got['new.mp3'] == ('write', None) and raw_tags(paths[0])['genre'] == ['rock']
  assert got['same.flac'] == ('unchanged', 'Rock')
  assert got['set.mp3'] == ('kept', 'Chanson')
  assert fingerprint(paths[1:] + [set_mp3]) == before  # kept, unchanged and skipped: intact
  assert f"{set_mp3}: kept 'Chanson' (predicted 'rock')" in listing
  assert '1 written, 1 unchanged, 1 kept, 6 not tagged.' in listing
  assert not leftovers(tmp_path)
