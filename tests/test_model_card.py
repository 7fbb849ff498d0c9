"""MODEL_CARD.md (#32): the card's sections and numbers come from the run's own records.

The card functions are pure (records in, Markdown out): these tests give them
the records a run writes (contract, data_summary.json, eval/report.json,
imported_from.json) and check every section and its numbers. test_export.py
checks the card of a real tiny run, exported.
"""

import re

from melgenre_jax.modes import model_card

GENRES = ['ambient', 'blues', 'classical', 'disco']
SECTIONS = ('## Task', '## Labels', '## Input format', '## Training data', '## Test metrics',
            '## Calibration', '## Pretrained weights', '## Known limits', '## How it was made',
            '## Config')


def _contract(task='genre', calibrated=True):
  return {
      'task': task, 'genres': GENRES, 'checkpoint_step': 12, 'created': '2026-12-05T09:00:00',
      'sample_rate': 8000, 'segment_samples': 8000, 'segment_seconds': 1.0,
      'segment_hop_seconds': 0.5, 'song_aggregation': 'mean of segment probabilities',
      'input': {'kind': 'waveform', 'shape': ['b', 8000], 'description': 'mono audio'},
      'features': {'n_mels': 32, 'n_fft': 256, 'hop_length': 128, 'where': 'device',
                   'normalize': False},
      'jax_version': '0.10.2', 'platforms': ['cpu'],
      'functions': {'onnx': {'opset': 23, 'converter': 'jax2onnx 0.13.0',
                             'outputs': ['probabilities', 'embedding'],
                             'max_abs_difference': {'probabilities': 2.5e-7, 'embedding': 9e-7},
                             'checked_on': "8 segments of the run's data cache"}},
      'calibration': ({'temperature': 1.7321, 'calibrated': True, 'fitted_on': 'validation',
                       'songs': 40, 'song_ece_before': 0.1234, 'song_ece_after': 0.0456}
                      if calibrated else {'temperature': 1.0, 'calibrated': False}),
  }


def _split(songs):
  return {'songs': songs, 'segments': 3 * songs,
          'per_genre': {g: {'songs': songs // 4 if g != 'disco' else 0} for g in GENRES}}


SUMMARY = {'source': 'folder', 'root': '/music', 'num_songs': 210, 'num_good': 200,
           'num_bad': 10, 'num_segments': 600,
           'split': {'name': 'stratified', 'seed': 3, 'leaky': False, 'by': 'group',
                     'train': _split(120), 'validation': _split(40), 'test': _split(40)}}
REPORT = {'split': 'test', 'num_songs': 40, 'num_segments': 120, 'checkpoint': {'step': 12},
          'leaky_split': False, 'warnings': [], 'chance_accuracy': 0.25,
          'song': {'accuracy': 0.875, 'accuracy_95ci': [0.7393, 0.9454], 'correct': 35,
                   'total': 40, 'macro_f1': 0.8642},
          'segment': {'accuracy': 0.7583, 'accuracy_95ci': [0.6741, 0.8265], 'correct': 91,
                      'total': 120, 'macro_f1': 0.7511},
          'calibration': {'song': {'ece_before': 0.1111, 'ece_after': 0.0222},
                          'segment': {'ece_before': 0.0999, 'ece_after': 0.0888}}}
CONFIG = {'model': {'name': 'crnn'}, 'seed': 3, 'num_epochs': 17}


def _run(**overrides):
  run = {'contract': _contract(), 'dataset': {'genres': GENRES}, 'data_summary': SUMMARY,
         'report': REPORT, 'config': CONFIG, 'imported_from': None, 'init_from': None,
         'command': 'python main.py --mode=export --workdir runs/x', 'workdir': '/runs/x'}
  return {**run, **overrides}


def _section(card: str, title: str) -> str:
  return card.split(title, 1)[1].split('\n## ', 1)[0]


def test_every_section_in_order():
  card = model_card.card(_run())
  positions = [card.index(s) for s in SECTIONS]
  assert positions == sorted(positions)
  assert card.startswith('# Model card\n') and card.endswith('```\n')


def test_numbers_come_from_the_records():
  card = model_card.card(_run())
  assert ', '.join(GENRES) in _section(card, '## Labels')
  fmt = _section(card, '## Input format')
  assert '8000 Hz' in fmt and '1 s (8000 samples), hop 0.5 s' in fmt and '32 bands' in fmt
  assert 'probabilities 2.5e-07, embedding 9.0e-07' in fmt and 'data cache' in fmt
  data = _section(card, '## Training data')
  assert '210 songs found, 200 usable, 10 skipped' in data and '600 segments' in data
  assert 'made by group' in data and 'stratified (seed 3' in data
  assert '| train | 120 | 360 | 30 | 30 | 30 | 0 |' in data
  metrics = _section(card, '## Test metrics')
  assert '| song | accuracy | 87.5% (95% CI 73.9% to 94.5%) (35/40) |' in metrics
  assert '| segment | accuracy | 75.8% (95% CI 67.4% to 82.7%) (91/120) |' in metrics
  assert '| song | macro F1 | 0.864 |' in metrics and '40 songs, 120 segments' in metrics
  cal = _section(card, '## Calibration')
  assert 'temperature 1.732' in cal and '0.1234 before, 0.0456 after' in cal
  assert 'On test (songs): ECE 0.1111 before, 0.0222 after' in cal
  assert 'None: trained from random initialisation' in _section(card, '## Pretrained weights')
  limits = _section(card, '## Known limits')
  assert 'No test songs of disco' in limits and '40 songs' in limits
  assert 'python main.py --mode=export --workdir runs/x' in _section(card, '## How it was made')
  assert '"num_epochs": 17' in _section(card, '## Config')


def test_missing_records_are_said_to_be_missing():
  card = model_card.card(_run(report=None, contract=_contract(calibrated=False)))
  assert 'Not evaluated: run --mode=eval' in _section(card, '## Test metrics')
  assert 'Not calibrated (temperature 1): run --mode=calibrate' in card
  assert 'no eval/report.json' in _section(card, '## Known limits')
  assert not re.search(r'\d+\.\d%', _section(card, '## Test metrics'))


def test_imported_musicnn_names_its_source_and_licence():
  imported = {'import_from': 'musicnn:MSD_musicnn', 'package': 'musicnn==0.1.0',
              'model': 'MSD_musicnn', 'licence': 'ISC (musicnn, Jordi Pons and Xavier Serra)'}
  contract = {**_contract(task='multilabel'), 'calibration': {'temperature': 1.0}}
  report = {'split': 'test', 'num_songs': 9, 'num_segments': 27, 'checkpoint': {'step': 0},
            'song': {'roc_auc_macro': 0.9012, 'pr_auc_macro': 0.4567},
            'segment': {'roc_auc_macro': 0.8765, 'pr_auc_macro': 0.3456}}
  card = model_card.card(_run(contract=contract, data_summary=None, report=report,
                              imported_from=imported))
  weights = _section(card, '## Pretrained weights')
  assert 'ISC' in weights and 'Pons' in weights and 'musicnn 0.1.0 wheel' in weights
  assert 'Million Song Dataset' in _section(card, '## Training data')
  assert 'Multi-label' in _section(card, '## Task') and '(4 tags)' in card
  assert 'independent sigmoids' in _section(card, '## Calibration')
  metrics = _section(card, '## Test metrics')
  assert '| song | roc_auc_macro | 0.901 |' in metrics
  assert '| segment | pr_auc_macro | 0.346 |' in metrics
  assert '--mode=import --import_from=musicnn:MSD_musicnn' in _section(card, '## How it was made')
  assert 'no other tag is predicted' in _section(card, '## Known limits')


def test_fine_tuned_run_names_its_source():
  init = {'source_workdir': '/runs/msd', 'source_step': 0, 'source_task': 'multilabel',
          'head': 're-initialised (the label set differs)'}
  weights = _section(model_card.card(_run(init_from=init)), '## Pretrained weights')
  assert 'Fine-tuned from /runs/msd (step 0' in weights and 're-initialised' in weights
