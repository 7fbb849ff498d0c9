"""A minutes-scale search: the tiny config, 3 trials of 2 epochs (tests, smoke runs).

  python main.py --config configs/tune_tiny.py --workdir /tmp/tune_tiny --mode tune

Searches dropout, L2 and the learning-rate scale; the median pruner may stop a
trial after its first epoch. Its scores mean nothing: it exercises the machinery.
"""

from configs import tiny  # main.py's folder (the repo root) is on sys.path


def get_config():
  config = tiny.get_config()
  config.num_epochs = 2
  config.tune.num_trials = 3
  config.tune.sampler = 'tpe'
  config.tune.startup_trials = 2
  config.tune.seed = 0
  config.tune.pruner = 'median'
  config.tune.min_epochs = 1
  config.tune.pruner_startup_trials = 1
  config.tune.space = (
      'model.dropout=uniform:0.0:0.5',
      'optim.l2=loguniform:1e-6:1e-2',
      'lr_scale=loguniform:0.3:3.0',
  )
  return config
