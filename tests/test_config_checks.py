"""Bad configuration values fail at start-up, naming the field and what it accepts."""

import json
import os

import pytest

from configs import default
from configs import tiny
from melgenre_jax import config_checks
from melgenre_jax.modes.tune import study


def _set(config, key, value):
  node = config
  *parents, leaf = key.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  return config


def test_reference_and_tiny_configs_are_valid():
  config_checks.validate(default.get_config())
  config_checks.validate(tiny.get_config())


@pytest.mark.parametrize('key, value, message', [
    ('batch_size', 0, 'config.batch_size=0 is invalid: must be a positive integer'),
    ('model.conv_features', -3, 'config.model.conv_features=-3'),
    ('features.n_mels', 0, 'config.features.n_mels=0'),
    ('model.dropout', 1.0, r'config.model.dropout=1.0 is invalid: must be in \[0, 1\)'),
    ('model.dropout', -0.1, 'config.model.dropout=-0.1'),
    ('data.source', 'spotify', 'allowed values are synthetic, gtzan, folder, manifest'),
    ('data.split', 'random', 'allowed values are stratified'),
    ('features.where', 'gpu', 'allowed values are device, host'),
    ('model.dtype', 'float16', 'allowed values are float32, bfloat16'),
    ('audio.short_clip', 'loop', 'config.audio.short_clip=.loop. is invalid: allowed values are pad, repeat'),
    ('audio.train_offsets', 'jitter', 'allowed values are grid, random'),
    ('optim.label_smoothing', 1.0, r'config.optim.label_smoothing=1.0 is invalid: must be in \[0, 1\)'),
    ('ema_decay', 1.0, r'config.ema_decay=1.0 is invalid: must be in \[0, 1\)'),
    ('bn_recompute_batches', -1, 'config.bn_recompute_batches=-1'),
    ('eval_microbatch', -2, 'config.eval_microbatch=-2'),
    ('prefetch_batches', -1, 'config.prefetch_batches=-1'),
    ('cpu_devices', 0, r'config.cpu_devices=0 is invalid: must be -1 \(auto\)'),
    ('schedule.stage_ends', (5, 3, 46, 50), 'strictly increasing'),
    ('schedule.stage_ends', (5, 41, 46, 60), 'past config.num_epochs=50'),
    ('schedule.stage_start_lrs', (5e-5, 0.0, 2e-4, 2e-4), 'must all be > 0'),
    ('model.lstm_sizes', (), 'config.model.lstm_sizes'),
    ('model.branch_a_pool', (4, 0), 'config.model.branch_a_pool'),
    ('audio.segment_seconds', 0.01, 'at least one FFT window'),
    ('features.hop_length', 4096, 'must be <= features.n_fft'),
    ('features.fmax', 20000.0, 'sample_rate/2'),
    ('data.validation_fraction', 0.95, 'sum to < 1'),
    ('data.max_bad_fraction', 1.5, 'config.data.max_bad_fraction'),
    ('optim.l2', -1.0, 'config.optim.l2'),
])
def test_bad_value_names_field(key, value, message):
  config = _set(default.get_config(), key, value)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config)


@pytest.mark.parametrize('overrides, message', [
    ({'features.where': 'host'}, 'needs --config.features.where=device'),
    ({'audio.segment_hop_seconds': 4.0}, 'segment_hop_seconds <= audio.segment_seconds'),
    ({'data.split': 'segment_random'}, 'use train_offsets=grid'),
])
def test_random_offsets_refuse_what_they_cannot_shift(overrides, message):
  config = _set(default.get_config(), 'audio.train_offsets', 'random')
  for k, v in overrides.items():
    config = _set(config, k, v)
  with pytest.raises(config_checks.ConfigError, match=message):
    config_checks.validate(config)


def test_label_smoothing_is_for_genres_only():
  config = _set(_set(default.get_config(), 'optim.label_smoothing', 0.1), 'task', 'multilabel')
  with pytest.raises(config_checks.ConfigError, match="task='genre' only"):
    config_checks.validate(config)


def test_turning_weight_averaging_on_or_off_is_an_architecture_difference():
  import json  # pylint: disable=g-import-not-at-top
  saved = json.loads(default.get_config().to_json_best_effort())
  assert config_checks.architecture_differences(saved, default.get_config()) == []
  diffs = config_checks.architecture_differences(saved, _set(default.get_config(), 'ema_decay', 0.99))
  assert len(diffs) == 1 and diffs[0].startswith('ema_decay')
  saved['ema_decay'] = 0.9
  assert config_checks.architecture_differences(saved, _set(default.get_config(), 'ema_decay', 0.99)) == []


def test_small_data_config_is_valid():
  from configs import small_data  # pylint: disable=g-import-not-at-top
  config = small_data.get_config()
  config.data.root = '/tmp'
  config_checks.validate(config)


def test_missing_data_root_says_what_to_pass(tmp_path):
  config = _set(default.get_config(), 'data.source', 'gtzan')
  with pytest.raises(config_checks.ConfigError, match='--config.data.root'):
    config_checks.validate(config)
  _set(config, 'data.root', str(tmp_path / 'nowhere'))
  with pytest.raises(config_checks.ConfigError, match='does not exist'):
    config_checks.validate(config)


def test_missing_manifest_is_refused():
  config = _set(default.get_config(), 'data.source', 'manifest')
  with pytest.raises(config_checks.ConfigError, match='--config.data.manifest'):
    config_checks.validate(config)


def test_architecture_differences_are_named(tmp_path):
  saved = json.loads(tiny.get_config().to_json_best_effort())
  config = _set(_set(tiny.get_config(), 'model.lstm_sizes', (16, 4)),
                'features.n_mels', 40)
  config.num_epochs = 7  # not an architecture field: allowed to change
  diffs = config_checks.architecture_differences(saved, config)
  assert diffs == ['features.n_mels: workdir has 32, config has 40',
                   'model.lstm_sizes: workdir has [8, 4], config has [16, 4]']
  os.makedirs(tmp_path / 'checkpoints')
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(config_checks.ConfigError, match='features.n_mels'):
    config_checks.check_workdir_compatible(config, str(tmp_path))


@pytest.mark.parametrize('key, value, message', [
    ('tune.sampler', 'grid', r"config.tune.sampler='grid' is invalid: allowed .* tpe, random"),
    ('tune.pruner', 'hyperband', 'config.tune.pruner=.*allowed values are median, halving, none'),
    ('tune.num_trials', 0, r'config.tune.num_trials=0 is invalid: must be an integer >= 1'),
    ('tune.halving_reduction_factor', 1, r'config.tune.halving_reduction_factor=1 .*>= 2'),
    ('tune.max_retries', -1, r'config.tune.max_retries=-1 .*>= 0'),
    ('tune.startup_trials', -2, r'config.tune.startup_trials=-2 .*integer >= 0'),
    ('tune.space', ('model.dropout=gauss:0:1',), r"config.tune.space\[0\]=.*unknown kind 'gauss'"),
    ('tune.space', (), 'config.tune.space is empty'),
])
def test_bad_tune_value_names_field(key, value, message):
  config = _set(default.get_config(), key, value)
  with pytest.raises(config_checks.ConfigError, match=message):
    study.check_tune(config)  # the tune mode checks its own block
  config_checks.validate(config)  # a training run ignores it


def test_config_without_tune_block_is_valid():
  config = tiny.get_config()
  del config.tune
  config_checks.validate(config)
