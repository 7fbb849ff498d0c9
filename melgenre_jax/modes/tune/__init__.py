"""Hyperparameter search with Optuna (``--mode=tune``).

  python main.py --config configs/synthetic.py --workdir runs/search --mode tune

Each trial is an ordinary training run (``train.train_and_evaluate``) in
``WORKDIR/tune/trial_<n>/``, scored by its best validation *song* accuracy over
epochs. Every evaluated epoch's song accuracy is reported to Optuna, and the
pruner (median or successive halving) may stop a trial after its checkpoint is
saved. When ``config.tune.num_trials`` trials are COMPLETE or PRUNED the search
stops and writes, under ``WORKDIR/tune/``:

  trials.csv, trials.md   one row per trial: number, state, score, epochs, params
  trials.png              score against trial number (pruned trials marked x)
  best_config.py          a ready-to-run config: the search's full config (command
                          line overrides included) with the best params applied:
                          python main.py --config WORKDIR/tune/best_config.py --workdir X
  study.db                the Optuna study (SQLite), unless config.tune.storage is set
  cache/, jax_cache/      decoded audio and XLA compilations shared by the trials
                          (config.data.cache_dir / JAX_COMPILATION_CACHE_DIR win
                          when set; config.tune.compile_cache=False turns the
                          latter off)

Several machines, one study. Point every machine at one database server and
run the same command on each; Optuna hands out trials, there is no scheduler:

  python main.py --config configs/gtzan.py --workdir runs/search --mode tune \\
      --config.tune.storage=postgresql://user:pass@dbhost/optuna \\
      --config.tune.seed=<a different number per machine>

Each search process owns its --workdir (a lock refuses a second process on the
same one), so several processes on one machine each get their own workdir and
share a study through ``--config.tune.storage=sqlite:////abs/path/study.db``
(SQLite on a local disk; over NFS use PostgreSQL/MySQL). The per-machine seed keeps the samplers from proposing
the same points. A machine stops starting trials once finished + running
trials reach ``num_trials``; each writes its report from the whole study, so
the last one to finish (or a re-run of the command) has the full table. Trial
directories stay on the machine that trained them.

The modules, by concern:

  space.py      the search-space syntax of ``config.tune.space`` and the allowed
                settings; light (no Optuna, no JAX)
  study.py      config.tune checked and read as Settings; sampler, pruner, storage; dead trials
                (interruptions, retries)
  objective.py  one trial: sample, train in the trial's directory, score
  report.py     trials.csv, trials.md, trials.png, best_config.py
  search.py     ``run_search``: checks the space, then runs the trials

This file imports nothing, so importing ``space`` stays light.
"""
