"""Reference recipe: the dual-branch CNN-LSTM with the published hyperparameters.

Every number the model, data pipeline or schedule uses lives here, so a run is
fully described by this file plus its ``--config.x.y=value`` overrides (which
are saved to ``WORKDIR/config.json``).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- Where songs come from and how they are split (by song, never by segment).
  config.data = ml_collections.ConfigDict()
  config.data.source = 'synthetic'  # synthetic | gtzan | folder | manifest
  config.data.root = ''  # dataset root (gtzan, folder)
  config.data.manifest = ''  # CSV path,label[,split][,group] (manifest)
  config.data.cache_dir = ''  # '' -> WORKDIR/cache
  # stratified | kfold | manifest | file | gtzan_fault_filtered | gtzan_stratified
  # | gtzan_artist_3fold | segment_random (leaky, for comparison only)
  config.data.split = 'stratified'
  # split=file: JSON {"train": [song keys], "validation": [...], "test": [...]}
  # (or a run's dataset.json); no validation keys -> carved from train.
  config.data.split_file = ''
  config.data.validation_fraction = 0.2
  config.data.test_fraction = 0.1
  config.data.num_folds = 5  # kfold / gtzan_artist_3fold (3 folds)
  config.data.fold = 0
  config.data.worker_count = 0  # grain worker processes (0: in the main process)
  config.data.cache_workers = 2  # processes decoding audio while building the cache
  config.data.max_bad_fraction = 0.1  # fail when more files than this are unreadable
  config.data.min_song_seconds = 1.0  # shorter songs are skipped; longer are padded to one segment
  config.data.skip_silent = True  # songs whose every segment is silent are skipped
  # The cache is checked against the sizes and CRC-32s recorded when it was built
  # (damaged entries are moved to CACHE_DIR/damaged/ and rebuilt). False: sizes
  # always, checksums of files up to 4 GiB (<= ~1.3 s each); True: checksums of all files.
  config.data.verify_cache = False
  # Built-in synthetic genre set (source='synthetic').
  config.data.synthetic = ml_collections.ConfigDict()
  config.data.synthetic.songs_per_genre = 100
  config.data.synthetic.song_seconds = 30.0
  config.data.synthetic.num_genres = 10
  # Names of the styles to use, e.g. ('jazz', 'rock'); () = the first num_genres.
  # Transfer experiments pretrain on some styles and fine-tune on the others.
  config.data.synthetic.genres = ()
  # True: every song also carries tags beside its genre (rhythm feel, brightness,
  # tempo), for config.task='multilabel' without downloads.
  config.data.synthetic.tagged = False

  # --- Audio decoding and segmentation.
  config.audio = ml_collections.ConfigDict()
  config.audio.sample_rate = 22050
  config.audio.segment_seconds = 3.0
  config.audio.segment_hop_seconds = 3.0  # = segment_seconds: ten 3 s segments per 30 s song
  # A clip shorter than one segment (but >= data.min_song_seconds) becomes one
  # segment: 'pad' with silence, or 'repeat' the clip until it is full.
  config.audio.short_clip = 'pad'
  # Training windows: 'grid' (always the cached segments) or 'random' (each
  # epoch every window moves by a fresh shift in [-hop/2, hop/2) within its
  # song, so a song is not always cut at 0, 3, 6 s; needs features.where='device'
  # and hop <= segment). Evaluation and predict always read the grid.
  config.audio.train_offsets = 'grid'

  # --- Log-mel front end (librosa conventions).
  config.features = ml_collections.ConfigDict()
  config.features.where = 'device'  # device: computed in the compiled step | host: librosa, cached
  config.features.n_fft = 2048
  config.features.hop_length = 512
  config.features.n_mels = 128
  config.features.fmin = 0.0
  config.features.fmax = 0.0  # 0 -> sample_rate / 2
  config.features.mel_norm = 'slaney'  # slaney | none
  config.features.htk = False
  config.features.top_db = 80.0  # <= 0 disables clipping
  config.features.amin = 1e-10
  config.features.normalize = False  # per-band standardisation, stats from the training split

  # --- On-device augmentation (training only; all off, as the reference found best).
  config.augment = ml_collections.ConfigDict()
  config.augment.noise_snr_db = 0.0  # > 0: add white noise at this SNR
  config.augment.noise_prob = 0.5
  config.augment.time_shift_seconds = 0.0  # > 0: random circular shift up to this much
  config.augment.time_masks = 0  # SpecAugment masks
  config.augment.time_mask_frames = 10
  config.augment.freq_masks = 0
  config.augment.freq_mask_bins = 8
  config.augment.mixup_alpha = 0.0  # > 0: mixup with Beta(alpha, alpha)

  # --- Model.
  config.model = ml_collections.ConfigDict()
  config.model.name = 'crnn'  # model family (melgenre_jax/models/): crnn = the reference
  config.model.conv_features = 32
  config.model.num_blocks = 2
  config.model.branch_a_kernel = (5, 5)
  config.model.branch_a_pool = (4, 4)
  config.model.branch_b_kernel = (3, 3)
  config.model.branch_b_pool = (2, 2)
  config.model.lstm_sizes = (128, 32)
  config.model.dropout = 0.2
  config.model.leaky_slope = 0.3
  config.model.batchnorm_momentum = 0.99
  config.model.dtype = 'float32'  # float32 | bfloat16 (CNN compute dtype)
  config.model.distill_outputs = 0  # > 0: a distill head of this width (config.distill)

  # --- What is learned: 'genre' (one label per song, softmax, cross-entropy) or
  # 'multilabel' (a manifest label holding several ';'-separated tags, as in
  # MagnaTagATune / MTG-Jamendo: sigmoid outputs, binary cross-entropy, ROC-AUC/PR-AUC).
  config.task = 'genre'
  config.multilabel = ml_collections.ConfigDict()
  config.multilabel.threshold = 0.5  # predict lists the tags whose probability reaches this

  # --- Transfer (melgenre_jax/train/transfer.py): start from another run's weights.
  # A run's workdir (its best checkpoint) or one checkpoint folder
  # (WORKDIR/checkpoints/<step>); '' = random initialisation.
  config.init_from = ''
  config.finetune = ml_collections.ConfigDict()
  # The backbone (everything but the classifier head) is frozen for this many
  # epochs, then trains; -1 = frozen for the whole run (a linear probe on it).
  config.finetune.freeze_backbone_epochs = 0
  config.finetune.backbone_lr_multiplier = 1.0  # backbone learning rate = schedule x this

  # --- Distillation (melgenre_jax/train/distill.py): also learn a pretrained
  # tagger's view of each training song. '' = off; 'musicnn:MSD_musicnn' or a
  # run's workdir. Needs config.model.distill_outputs = the targets' width.
  config.distill = ml_collections.ConfigDict()
  config.distill.teacher = ''
  config.distill.target = 'embedding'  # embedding (standardised, MSE) | tags (probabilities, BCE)
  config.distill.weight = 1.0
  config.distill.short_clip = 'repeat'  # how the teacher fills clips shorter than its window
  # True: the teacher runs in the train step on the student's augmented, mixed
  # audio (every view its own targets); needs target='tags'.
  config.distill.consistent = False

  # --- Optimisation.
  config.batch_size = 32  # global, over all devices and hosts
  config.eval_batch_size = 64
  # Before each evaluation and checkpoint, BatchNorm statistics are recomputed
  # over this many training batches with the current weights (0: keep the
  # running averages). On small sets the averages lag the weights for epochs.
  config.bn_recompute_batches = 16
  # Rows per pass through the model inside an eval/predict batch: -1 = auto (8 on
  # CPU, where a few rows' activations stay in cache; the whole batch on GPU/TPU).
  config.eval_microbatch = -1
  # JAX devices on a CPU-only machine, the batch split over them like over
  # GPUs: -1 = auto (2 single-threaded devices on 2 cores; see
  # melgenre_jax/runtime/cpu_devices.py), 1 = one device on all cores.
  config.cpu_devices = -1
  config.num_epochs = 50
  config.optim = ml_collections.ConfigDict()
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-7
  config.optim.l2 = 1e-4  # L2 penalty l2 * sum(W^2) on kernels (Keras' l2(...)), coupled into Adam
  # > 0: keep a moving average of the weights (e.g. 0.99 with ~15 steps an
  # epoch); evaluation, the best checkpoint and inference use the average.
  config.ema_decay = 0.0
  config.optim.label_smoothing = 0.0  # genre task: targets (1 - s) one-hot + s / num_genres

  # Multi-stage learning rate, in epochs (1-based: the first stage covers epochs
  # 1..stage_ends[0]). A stage is linear from its start to its end value, so
  # equal values make it constant. Past the last stage the last value holds.
  config.schedule = ml_collections.ConfigDict()
  config.schedule.stage_ends = (5, 41, 46, 50)
  config.schedule.stage_start_lrs = (5e-5, 5.55e-4, 2e-4, 2e-4)
  config.schedule.stage_end_lrs = (5.55e-4, 5.55e-4, 2e-4, 5e-5)

  # --- Checkpoints, logging.
  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.max_to_keep = 3
  config.checkpoint.every_epochs = 1
  config.log_every_steps = 10  # train metrics are fetched from the device this often
  config.prefetch_batches = 2  # global batches placed on the devices ahead of the step
  config.progress_bar = True
  # glibc: keep freed host memory mapped; the CPU train step is ~1.5x faster
  # (melgenre_jax/runtime/hostmem.py), the process keeps its peak memory.
  config.keep_host_memory = True
  config.eval_every_epochs = 1

  # --- Temperature scaling (melgenre_jax/calibration.py), fitted on validation at
  # the end of training and by --mode=calibrate. A fitted T is applied only with
  # at least min_songs validation songs and when it lowers the song NLL of
  # held-out validation songs (cross-fitted) by min_nll_gain; otherwise T = 1.
  config.calibration = ml_collections.ConfigDict()
  config.calibration.min_songs = 20
  config.calibration.min_nll_gain = 0.01  # nats per song

  # --- Test hooks (never set in real runs).
  config.debug = ml_collections.ConfigDict()
  config.debug.max_steps = -1  # stop after this many steps (tests)
  config.debug.step_delay_seconds = 0.0  # sleep after each step (kill tests)

  # --- Cross-validation (--mode=cv; see melgenre_jax/modes/cv.py). Each fold is a
  # training run in WORKDIR/cv/fold_<repeat>_<fold>/ tested on its fold.
  config.cv = ml_collections.ConfigDict()
  config.cv.num_folds = 5
  config.cv.repeats = 1  # repeat r reshuffles the folds and trains with seed + r
  config.cv.by = 'auto'  # auto (group when the source gives groups, else song) | song | group
  # Of each fold run's training songs, by group and genre; they choose its best
  # epoch. 0: none, the run trains on all of them and is tested at its last epoch.
  config.cv.validation_fraction = 0.15

  # --- Hyperparameter search (--mode=tune; see melgenre_jax/modes/tune/).
  # Each entry of ``space`` is 'FIELD=SPEC': FIELD a config path ('model.dropout')
  # or the special 'lr_scale' (multiplies every schedule.stage_*_lrs value);
  # SPEC one of uniform:LOW:HIGH | loguniform:LOW:HIGH | int:LOW:HIGH[:STEP] |
  # logint:LOW:HIGH | choice:A|B|C (Python literals). Replace the whole tuple from
  # the command line: --config.tune.space="('model.dropout=uniform:0:0.5',)".
  config.tune = ml_collections.ConfigDict()
  config.tune.num_trials = 20  # stop when this many trials are COMPLETE or PRUNED
  config.tune.sampler = 'tpe'  # tpe | random
  config.tune.startup_trials = 5  # tpe: random trials before it models the space
  config.tune.seed = 0  # sampler seed; give each machine its own when sharing a study
  config.tune.pruner = 'median'  # median | halving | none
  config.tune.min_epochs = 5  # no trial is pruned before it has trained this many epochs
  config.tune.pruner_startup_trials = 3  # median: finished trials before any pruning
  config.tune.halving_reduction_factor = 3  # halving: keep 1/factor of trials per rung
  config.tune.storage = ''  # '' -> sqlite:///WORKDIR/tune/study.db; or postgresql://...
  config.tune.study_name = 'melgenre'
  config.tune.heartbeat_seconds = 60  # trials silent for 2x this are failed and retried
  config.tune.max_retries = 2  # retries of a trial whose process died
  config.tune.compile_cache = True  # share XLA compilations between trials (WORKDIR/tune/jax_cache)
  config.tune.space = (
      'lr_scale=loguniform:0.3:3.0',
      'model.dropout=uniform:0.0:0.5',
      'optim.l2=loguniform:1e-6:1e-2',
      'model.lstm_sizes=choice:(64,16)|(128,32)|(256,64)',
      'model.conv_features=choice:16|32|64',
      'batch_size=choice:16|32|64',
  )
  return config
