"""Train-step and inference throughput: this project's compiled steps vs. PyTorch and Keras 3.

Run from the repository root (peers: pip install -r benchmarks/requirements.txt):

  python benchmarks/bench_train_step.py                      # the peer comparison
  python benchmarks/bench_train_step.py --variants=jax,jax_unroll4,jax_bf16 --rounds=5

Every row trains the reference model (configs/default.py: 128 mels x 130 frames,
batch 32, Adam + L2 on kernels, softmax cross-entropy, dropout and BatchNorm in
training mode) on a fixed batch with the spectrogram as input - except
``jax_device``, which takes 3 s waveforms and computes the log-mel inside the
step, to show what the on-device front end costs. The ``*_infer`` rows run the
same model in inference mode (BatchNorm running averages, no dropout) on the
same batch: ``steps.make_predict_step`` (softmax out) against PyTorch under
``inference_mode`` and Keras ``predict_on_batch`` (logits out; a 10-way softmax
is negligible). Each row runs in its own
worker process; rows are timed round-robin (jax, torch, keras-tf, keras-jax,
repeat) so load drift on a shared machine hits all alike, and the median round
is reported. Warm-up / compilation is excluded from the rates and shown apart.

FLOPs: the hand count (convs, LSTMs, dense; training = 3 x forward) is used for
every row's achieved GFLOP/s, so the rows are comparable; XLA's own count
(``compiled.cost_analysis()['flops']`` of the real JAX step) is printed beside it.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.peers import harness  # noqa: E402

BATCH = 32
NUM_CLASSES = 10

# name -> (label, options). kind: jax | torch | keras. Extra JAX rows are the
# speed experiments of issue 8 (see benchmarks/README.md for their results).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    'jax': ('JAX/Flax, steps.make_train_step (spectrogram in)', dict(kind='jax')),
    'jax_device': ('JAX/Flax, waveform in, log-mel in the step', dict(kind='jax', where='device')),
    'torch_eager': ('PyTorch eager', dict(kind='torch')),
    'torch_compile': ('PyTorch torch.compile (inductor)', dict(kind='torch', compile=True)),
    'keras_tf_jit': ('Keras 3 / TensorFlow, jit_compile=True', dict(kind='keras', backend='tensorflow', jit=True)),
    'keras_tf': ('Keras 3 / TensorFlow, jit_compile=False', dict(kind='keras', backend='tensorflow', jit=False)),
    'keras_jax': ('Keras 3 / JAX backend', dict(kind='keras', backend='jax', jit=True)),
    # --- inference: the same model in eval mode, softmax out, same batch
    'jax_infer': ('JAX/Flax, steps.make_predict_step (inference)', dict(kind='jax', infer=True)),
    'torch_infer': ('PyTorch eager, inference_mode', dict(kind='torch', infer=True)),
    'torch_compile_infer': ('PyTorch torch.compile, inference_mode', dict(kind='torch', compile=True, infer=True)),
    'keras_tf_infer': ('Keras 3 / TensorFlow predict_on_batch, no XLA', dict(kind='keras', backend='tensorflow', jit=False, infer=True)),
    'keras_tf_jit_infer': ('Keras 3 / TensorFlow predict_on_batch, XLA', dict(kind='keras', backend='tensorflow', jit=True, infer=True)),
    # --- speed experiments (not in the default list)
    'jax_infer_whole': ('JAX inference, whole batch per pass (eval_microbatch=0)',
                        dict(kind='jax', infer=True, overrides={'eval_microbatch': 0})),
    'torch_eager_cl': ('PyTorch eager, channels_last', dict(kind='torch', channels_last=True)),
    'torch_compile_cl': ('PyTorch torch.compile, channels_last', dict(kind='torch', compile=True, channels_last=True)),
    'jax_glibc_default': ('JAX, config.keep_host_memory=False (glibc malloc as it comes)',
                          dict(kind='jax', overrides={'keep_host_memory': False})),
    'jax_bf16': ('JAX, model.dtype=bfloat16 (CNN)', dict(kind='jax', overrides={'model.dtype': 'bfloat16'})),
    'jax_unroll2': ('JAX, LSTM scan unroll=2', dict(kind='jax', unroll=2)),
    'jax_unroll4': ('JAX, LSTM scan unroll=4', dict(kind='jax', unroll=4)),
    'jax_unroll8': ('JAX, LSTM scan unroll=8', dict(kind='jax', unroll=8)),
    'jax_unroll_full': ('JAX, LSTM scan fully unrolled', dict(kind='jax', unroll=True)),
    'jax_reduce_window': ('JAX, max pool as lax.reduce_window', dict(kind='jax', pool='reduce_window')),
    'jax_reshape_pool': ('JAX, max pool as crop+reshape+max, autodiff backward',
                         dict(kind='jax', pool='reshape')),
    'jax_im2col': ('JAX, convs as shifted views + one matmul (im2col)', dict(kind='jax', conv='im2col')),
    'jax_conv1_pad8': ('JAX, first conv input padded to 8 channels', dict(kind='jax', conv1='pad8')),
    'jax_plain_block': ('JAX, ConvBlock as plain nn.Conv->BatchNorm->leaky->pool->Dropout',
                        dict(kind='jax', block='plain')),
    'jax_no_donate': ('JAX, step without buffer donation', dict(kind='jax', donate=False)),
    'jax_onednn': ('JAX, XLA_FLAGS=--xla_cpu_use_onednn=true',
                   dict(kind='jax', env={'XLA_FLAGS': '--xla_cpu_use_onednn=true'})),
    'jax_xnnpack': ('JAX, XLA_FLAGS=--xla_cpu_use_xnnpack=true',
                    dict(kind='jax', env={'XLA_FLAGS': '--xla_cpu_use_xnnpack=true'})),
    'jax_eigen1': ('JAX, XLA_FLAGS=--xla_cpu_multi_thread_eigen=false',
                   dict(kind='jax', env={'XLA_FLAGS': '--xla_cpu_multi_thread_eigen=false'})),
    'jax_1dev': ('JAX, config.cpu_devices=1 (one XLA device on all cores)',
                 dict(kind='jax', overrides={'cpu_devices': 1})),
    'jax_1dev_infer': ('JAX inference, config.cpu_devices=1',
                       dict(kind='jax', infer=True, overrides={'cpu_devices': 1})),
    'jax_no_dropout': ('JAX, model.dropout=0 (no dropout masks drawn)',
                       dict(kind='jax', overrides={'model.dropout': 0.0})),
    'jax_flax_dropout': ('JAX, flax nn.Dropout (a float32 uniform per element) instead of models.Dropout',
                         dict(kind='jax', dropout='flax')),
    'jax_rbg': ('JAX, JAX_DEFAULT_PRNG_IMPL=rbg (XLA RngBitGenerator for dropout)',
                dict(kind='jax', env={'JAX_DEFAULT_PRNG_IMPL': 'rbg'})),
    'jax_vec512': ('JAX, XLA_FLAGS=--xla_cpu_prefer_vector_width=512',
                   dict(kind='jax', env={'XLA_FLAGS': '--xla_cpu_prefer_vector_width=512'})),
    'jax_fast_math': ('JAX, XLA_FLAGS=--xla_cpu_enable_fast_math=true',
                      dict(kind='jax', env={'XLA_FLAGS': '--xla_cpu_enable_fast_math=true'})),
    'jax_concurrency_sched': ('JAX, XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=true',
                              dict(kind='jax', env={'XLA_FLAGS':
                                                    '--xla_cpu_enable_concurrency_optimized_scheduler=true'})),
    'jax_infer_mb4': ('JAX inference, config.eval_microbatch=4',
                      dict(kind='jax', infer=True, overrides={'eval_microbatch': 4})),
    'jax_infer_mb16': ('JAX inference, config.eval_microbatch=16 (the whole shard of 2 devices)',
                       dict(kind='jax', infer=True, overrides={'eval_microbatch': 16})),
    'jax_infer_vec512': ('JAX inference, XLA_FLAGS=--xla_cpu_prefer_vector_width=512',
                         dict(kind='jax', infer=True,
                              env={'XLA_FLAGS': '--xla_cpu_prefer_vector_width=512'})),
    'jax_infer_fast_math': ('JAX inference, XLA_FLAGS=--xla_cpu_enable_fast_math=true',
                            dict(kind='jax', infer=True,
                                 env={'XLA_FLAGS': '--xla_cpu_enable_fast_math=true'})),
    'jax_4dev': ('JAX, config.cpu_devices=4', dict(kind='jax', overrides={'cpu_devices': 4})),
}
# The peer comparison of the README. Rows with a '+malloc' suffix (glibc tuned
# by environment, as config.keep_host_memory does for our step) are extra:
# adding them to the defaults takes the script past 10 minutes on 2 cores.
DEFAULT_VARIANTS = ('jax,torch_eager,torch_compile,keras_tf,keras_tf_jit,keras_jax,'
                    'jax_infer,torch_infer,torch_compile_infer,keras_tf_infer,keras_tf_jit_infer')

# A variant name may end in '+SUFFIX' to run it with extra environment, e.g.
# 'jax+thp' or 'keras_tf+thp'. thp: glibc malloc asks for transparent huge pages
# (THP must be 'madvise' or 'always' in /sys/kernel/mm/transparent_hugepage/enabled),
# so a fresh multi-MB buffer costs a few page faults instead of thousands.
ENV_SUFFIXES: dict[str, dict[str, str]] = {
    'thp': {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=1'},
    # glibc malloc keeps freed memory and serves large blocks from one heap, so a
    # step's fresh buffers reuse pages that are already mapped (no page faults).
    'malloc': {'GLIBC_TUNABLES': 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=2147483647'
                                 ':glibc.malloc.arena_max=1'},
    'tcmalloc': {'LD_PRELOAD': '/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4'},
    # XLA:CPU library back ends for convolutions and matmuls.
    'xnnpack': {'XLA_FLAGS': '--xla_cpu_use_xnnpack=true'},
    'onednn': {'XLA_FLAGS': '--xla_cpu_use_onednn=true'},
}


def split_variant(name: str) -> tuple[str, list[str]]:
  base, *suffixes = name.split('+')
  return base, suffixes


def variant_label(name: str) -> str:
  base, suffixes = split_variant(name)
  extra = ''.join(f' [{" ".join(f"{k}={v}" for k, v in ENV_SUFFIXES[s].items())}]' for s in suffixes)
  return VARIANTS[base][0] + extra


def reference_config():
  from configs import default  # pylint: disable=g-import-not-at-top
  return default.get_config()


def model_flops_per_sample(config) -> dict[str, float]:
  """Forward multiply-adds x 2 of the convs, LSTMs and head, counted by hand.

  BatchNorm, activations, pooling and the optimizer are left out (a few % at
  most); a training step is taken as 3 x forward (forward + 2 x backward).
  """
  m = config.model
  frames = 1 + int(round(config.audio.segment_seconds * config.audio.sample_rate)) // config.features.hop_length
  mels = config.features.n_mels
  total = 0.0
  for kernel, pool in ((m.branch_a_kernel, m.branch_a_pool), (m.branch_b_kernel, m.branch_b_pool)):
    t, f, cin = frames, mels, 1
    for _ in range(m.num_blocks):
      total += 2.0 * t * f * kernel[0] * kernel[1] * cin * m.conv_features
      t, f, cin = t // pool[0], f // pool[1], m.conv_features
    width = f * cin
    for h in m.lstm_sizes:
      total += 2.0 * t * 4 * h * (width + h)
      width = h
  total += 2.0 * 2 * m.lstm_sizes[-1] * NUM_CLASSES
  return {'forward': total, 'train': 3.0 * total, 'frames': frames, 'mels': mels}


# ---------------------------------------------------------------- workers


class JaxRunner:
  """The real ``steps.make_train_step`` on a 1-device mesh (plus experiment patches)."""

  def __init__(self, opts: dict[str, Any]):
    self.opts = opts

  def _patch_models(self):
    import flax.linen as nn  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from melgenre_jax.models import crnn as models  # pylint: disable=g-import-not-at-top
    from melgenre_jax.models import layers  # pylint: disable=g-import-not-at-top
    o = self.opts
    if o.get('pool') == 'reduce_window':
      def reduce_window_pool(x, window):
        wt, wf = window
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, wt, wf, 1), (1, wt, wf, 1), 'VALID')
      models.max_pool = reduce_window_pool
    elif o.get('pool') == 'reshape':
      window_view = layers._windows  # pylint: disable=protected-access

      def reshape_pool(x, window):  # the view models.max_pool uses, autodiff's backward
        return window_view(x, tuple(window)).max(axis=(2, 4))
      models.max_pool = reshape_pool
    if 'unroll' in o:
      unroll = o['unroll']

      class LSTMStack(models.LSTMStack):  # same name -> same parameter paths

        @nn.compact
        def __call__(self, x):
          for size in self.sizes:
            x = nn.RNN(nn.OptimizedLSTMCell(size), unroll=unroll)(x)
          return x[:, -1, :]

      models.LSTMStack = LSTMStack
    if o.get('block') == 'plain':
      # The textbook formulation models.ConvBlock had before issue 8 (full-resolution
      # BatchNorm and LeakyReLU, then the pool): the 'before' of that change.
      class ConvBlock(models.ConvBlock):  # same name -> same parameter paths

        @nn.compact
        def __call__(self, x, train):
          x = nn.Conv(self.features, tuple(self.kernel), padding='SAME',
                      kernel_init=models.he_normal, dtype=self.dtype)(x)
          x = nn.BatchNorm(use_running_average=not train, momentum=self.bn_momentum,
                           epsilon=1e-3, dtype=self.dtype,
                           axis_name=self.bn_axis_name if train else None)(x)
          x = nn.leaky_relu(x, negative_slope=self.leaky_slope)
          x = models.max_pool(x, self.pool)
          return models.Dropout(self.dropout)(x, deterministic=not train)

      models.ConvBlock = ConvBlock
    if o.get('dropout') == 'flax':
      class FlaxDropout(nn.Module):  # what models.Dropout replaced
        rate: float

        @nn.compact
        def __call__(self, x, deterministic):
          return nn.Dropout(self.rate)(x, deterministic=deterministic)

      models.Dropout = FlaxDropout
    if o.get('conv') == 'im2col':
      def im2col_conv(x, kernel):  # the kt*kf shifted views side by side, then one matmul
        kt, kf, cin, cout = kernel.shape
        t, f = x.shape[1], x.shape[2]
        xp = jnp.pad(x, ((0, 0), ((kt - 1) // 2, kt // 2), ((kf - 1) // 2, kf // 2), (0, 0)))
        cols = jnp.concatenate([xp[:, i:i + t, j:j + f, :] for i in range(kt) for j in range(kf)],
                               axis=-1)
        return jnp.einsum('btfk,ko->btfo', cols, kernel.reshape(kt * kf * cin, cout))
      models.conv_same = im2col_conv
    if o.get('conv1') == 'pad8':
      plain_conv = models.conv_same

      def conv_same(x, kernel):  # zero input channels 1..7: same result, Cin=8 for XLA
        if x.shape[-1] != 1:
          return plain_conv(x, kernel)
        return plain_conv(jnp.pad(x, ((0, 0),) * 3 + ((0, 7),)),
                          jnp.pad(kernel, ((0, 0), (0, 0), (0, 7), (0, 0))))

      models.conv_same = conv_same

  def setup(self) -> dict[str, Any]:
    self._patch_models()
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from jax.sharding import PartitionSpec as P  # pylint: disable=g-import-not-at-top
    from melgenre_jax import schedules, steps  # pylint: disable=g-import-not-at-top
    from melgenre_jax.input_spec import InputSpec  # pylint: disable=g-import-not-at-top
    from melgenre_jax.runtime import parallel  # pylint: disable=g-import-not-at-top
    config = reference_config()
    config.features.where = self.opts.get('where', 'host')
    config.update_from_flattened_dict(self.opts.get('overrides', {}))
    if config.keep_host_memory:  # what train_and_evaluate does (melgenre_jax/runtime/hostmem.py)
      from melgenre_jax.runtime import hostmem  # pylint: disable=g-import-not-at-top
      if not hostmem.keep_freed_memory():
        raise RuntimeError('glibc mallopt refused config.keep_host_memory')
    # What dispatch.run does before JAX starts (one device per core on a CPU):
    # the mesh spans every device it leaves, as in training.
    from melgenre_jax.runtime import cpu_devices  # pylint: disable=g-import-not-at-top
    cpu_devices.configure(config.cpu_devices, BATCH)
    mesh = parallel.create_mesh(jax.devices())
    tx = schedules.create_optimizer(config, schedules.create_learning_rate_schedule(config.schedule, 313))
    state = steps.build_state(config, NUM_CLASSES, mesh, tx, jax.random.PRNGKey(0))
    if self.opts.get('donate', True):
      step = steps.make_train_step(mesh, config, NUM_CLASSES)
    else:  # make_train_step without donate_argnums
      fn = functools.partial(steps.train_step, config=config,
                             input_spec=InputSpec.from_config(config), num_classes=NUM_CLASSES)
      step = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=(P(), P(parallel.AXIS)),
                                   out_specs=(P(), P()), check_vma=False))
    rng = np.random.default_rng(0)
    shape = (BATCH,) + InputSpec.from_config(config).input_shape
    if config.features.where == 'device':
      inputs = 0.1 * rng.standard_normal(shape)
    else:  # log-mel-like values in dB
      inputs = -40.0 + 15.0 * rng.standard_normal(shape)
    batch = parallel.global_batch({'inputs': inputs.astype(np.float32),
                                   'label': (np.arange(BATCH) % NUM_CLASSES).astype(np.int32)}, mesh)
    if self.opts.get('infer'):
      spec = InputSpec.from_config(config)
      predict = steps.make_predict_step(mesh, state.apply_fn, spec.device_preprocess(),
                                        steps.resolve_microbatch(config.eval_microbatch))
      state, step, batch = state.variables(), predict, batch['inputs']
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    self.step, self.state, self.batch = compiled, state, batch
    start = time.perf_counter()
    self.run(2)
    warm_s = time.perf_counter() - start
    return {'compile_s': compile_s, 'warmup_s': warm_s,
            'xla_flops_per_sample': float(cost.get('flops', float('nan'))) / BATCH,
            'version': f'jax {jax.__version__}',
            'threads': f'XLA:CPU, XLA_FLAGS={os.environ.get("XLA_FLAGS", "") or "(none)"}, '
                       f'device {jax.devices()[0].device_kind}'}

  def run(self, n: int) -> float:
    import jax  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    if self.opts.get('infer'):
      for _ in range(n):
        probs = self.step(self.state, self.batch)
      jax.block_until_ready(probs)
      return time.perf_counter() - start
    for _ in range(n):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))
    if not bool(metrics['finite']):
      raise RuntimeError('non-finite loss in the JAX step')
    return time.perf_counter() - start


class TorchRunner:
  """The same model in PyTorch: nn.LSTM (oneDNN), Adam with coupled L2 on weights."""

  def __init__(self, opts: dict[str, Any]):
    self.opts = opts

  def setup(self) -> dict[str, Any]:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks.peers import torch_model  # pylint: disable=g-import-not-at-top
    config = reference_config()
    torch.manual_seed(0)
    fl = model_flops_per_sample(config)
    model = torch_model.DualBranchCRNN(num_classes=NUM_CLASSES, n_mels=fl['mels']).train()
    if self.opts.get('channels_last'):
      model = model.to(memory_format=torch.channels_last)
    kernels, others = torch_model.kernel_and_other_params(model)
    # weight_decay in torch's Adam is the coupled L2 gradient term, as optax.add_decayed_weights.
    opt = torch.optim.Adam([{'params': kernels, 'weight_decay': 2.0 * config.optim.l2},
                            {'params': others, 'weight_decay': 0.0}],
                           lr=5.55e-4, betas=(config.optim.b1, config.optim.b2), eps=config.optim.eps)
    loss_fn = torch.nn.CrossEntropyLoss()
    forward = torch.compile(model) if self.opts.get('compile') else model
    gen = torch.Generator().manual_seed(0)
    self.x = (-40.0 + 15.0 * torch.randn(BATCH, fl['frames'], fl['mels'], generator=gen))
    self.y = torch.arange(BATCH) % NUM_CLASSES

    def train_step():
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(forward(self.x), self.y)
      loss.backward()
      opt.step()
      return loss

    def infer_step():
      with torch.inference_mode():
        return torch.softmax(forward(self.x), dim=-1)

    if self.opts.get('infer'):
      model.eval()
    step = infer_step if self.opts.get('infer') else train_step

    self.step = step
    start = time.perf_counter()
    self.step()
    compile_s = time.perf_counter() - start  # first call: torch.compile's compile, else warm-up
    start = time.perf_counter()
    self.run(1)
    warm_s = time.perf_counter() - start
    return {'compile_s': compile_s if self.opts.get('compile') else 0.0, 'warmup_s': warm_s,
            'version': f'torch {torch.__version__}',
            'threads': f'torch.get_num_threads()={torch.get_num_threads()}, '
                       f'interop={torch.get_num_interop_threads()}, '
                       f'mkldnn={torch.backends.mkldnn.is_available()}'}

  def run(self, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
      loss = self.step()
    if not bool(loss.isfinite().all()):
      raise RuntimeError('non-finite output in the torch step')
    return time.perf_counter() - start


class KerasRunner:
  """Keras 3 ``train_on_batch`` (backend from KERAS_BACKEND, set before import)."""

  def __init__(self, opts: dict[str, Any]):
    self.opts = opts

  def setup(self) -> dict[str, Any]:
    import keras  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from benchmarks.peers import keras_model  # pylint: disable=g-import-not-at-top
    config = reference_config()
    fl = model_flops_per_sample(config)
    keras.utils.set_random_seed(0)
    model = keras_model.build_model(num_classes=NUM_CLASSES, frames=fl['frames'], n_mels=fl['mels'],
                                    l2=config.optim.l2)
    self.model = keras_model.compile_model(model, jit_compile=self.opts['jit'])
    rng = np.random.default_rng(0)
    x = (-40.0 + 15.0 * rng.standard_normal((BATCH, fl['frames'], fl['mels']))).astype(np.float32)
    y = (np.arange(BATCH) % NUM_CLASSES).astype(np.int32)
    backend = keras.backend.backend()
    if backend == 'tensorflow':
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self.x, self.y = tf.constant(x), tf.constant(y)
      threads = (f'TF intra_op={tf.config.threading.get_intra_op_parallelism_threads()}, '
                 f'inter_op={tf.config.threading.get_inter_op_parallelism_threads()} (0 = auto)')
      version = f'keras {keras.__version__} / tensorflow {tf.__version__}'
    else:
      import jax  # pylint: disable=g-import-not-at-top
      self.x, self.y = jax.device_put(x), jax.device_put(y)
      threads = f'XLA:CPU, XLA_FLAGS={os.environ.get("XLA_FLAGS", "") or "(none)"}'
      version = f'keras {keras.__version__} / jax {jax.__version__}'
    start = time.perf_counter()
    self.call()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    self.run(1)
    warm_s = time.perf_counter() - start
    return {'compile_s': compile_s, 'warmup_s': warm_s, 'version': version, 'threads': threads}

  def call(self):
    if self.opts.get('infer'):
      return self.model.predict_on_batch(self.x)  # compiled predict function, softmax-free logits
    return self.model.train_on_batch(self.x, self.y)

  def run(self, n: int) -> float:
    import numpy as np  # pylint: disable=g-import-not-at-top
    start = time.perf_counter()
    for _ in range(n):
      loss = self.call()  # returns host numbers: synchronous
    if not np.isfinite(np.asarray(loss)).all():
      raise RuntimeError('non-finite loss in the Keras step')
    return time.perf_counter() - start


def make_runner(name: str):
  opts = VARIANTS[split_variant(name)[0]][1]
  return {'jax': JaxRunner, 'torch': TorchRunner, 'keras': KerasRunner}[opts['kind']](opts)


def variant_env(name: str) -> dict[str, str]:
  base, suffixes = split_variant(name)
  opts = VARIANTS[base][1]
  env = dict(opts.get('env', {}))
  for s in suffixes:
    env.update(ENV_SUFFIXES[s])
  if opts['kind'] == 'keras':
    env['KERAS_BACKEND'] = opts['backend']
  env.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  return env


# ---------------------------------------------------------------- driver


def main(argv: list[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  names = [n.strip() for n in f.variants.split(',') if n.strip()]
  unknown = [n for n in names if split_variant(n)[0] not in VARIANTS
             or any(s not in ENV_SUFFIXES for s in split_variant(n)[1])]
  if unknown:
    raise ValueError(f'--variants: unknown {unknown}; known: {", ".join(VARIANTS)}, each '
                     f'optionally with +{" / +".join(ENV_SUFFIXES)}')
  config = reference_config()
  fl = model_flops_per_sample(config)
  variants = [harness.Variant(n, variant_label(n), variant_env(n)) for n in names]
  print(f'Setting up {len(variants)} workers ({"in parallel" if f.parallel_setup else "one at a time"})...',
        flush=True)
  results = harness.run_round_robin(__file__, variants, rounds=f.rounds, units=f.steps,
                                    parallel_setup=f.parallel_setup,
                                    warmup_rounds=f.warmup_rounds,
                                    log=lambda s: print(s, flush=True))

  print()
  print(f'Train step, reference model: log-mel {fl["frames"]} frames x {fl["mels"]} mels in, batch {BATCH}, '
        f'Adam + L2, dropout/BatchNorm in training mode; median of {f.rounds} interleaved rounds x '
        f'{f.steps} step(s) after {f.warmup_rounds} untimed warm-up round(s); compilation excluded')
  for line in harness.machine_lines():
    print(line)
  xla_flops = next((r.info.get('xla_flops_per_sample') for r in results
                    if r.variant.name == 'jax' and r.info), None)
  print(f'model FLOPs per sample: forward {fl["forward"] / 1e6:.1f} MFLOP (hand count: convs, LSTMs, '
        f'head), train step = 3 x forward = {fl["train"] / 1e6:.1f} MFLOP'
        + (f'; XLA cost_analysis of the JAX step: {xla_flops / 1e6:.1f} MFLOP/sample' if xla_flops else ''))
  print()
  header = (f'| {"variant":19s} | {"what":50s} | {"samples/s":>9s} | {"ms/step":>8s} | '
            f'{"min-max ms":>11s} | {"vs jax":>6s} | {"GFLOP/s":>7s} | {"compile s":>9s} |')
  print(header)
  print('|' + '|'.join('-' * len(c) for c in header.split('|')[1:-1]) + '|')
  base = next((r.median for r in results if r.variant.name == 'jax' and r.seconds), None)
  base_infer = next((r.median for r in results if r.variant.name == 'jax_infer' and r.seconds),
                    None)
  for r in results:
    if r.error and not r.seconds:
      print(f'| {r.variant.name:19s} | {r.variant.label:50s} | FAILED: {r.error.splitlines()[0][:80]}')
      continue
    rate = BATCH / r.median
    infer = _is_infer(r.variant.name)
    ref = base_infer if infer else base
    rel = f'{ref / r.median:6.2f}' if ref else '     -'
    comp = r.info.get('compile_s', 0.0)
    flops = fl['forward'] if infer else fl['train']
    print(f'| {r.variant.name:19s} | {r.variant.label:50s} | {rate:9.2f} | {r.median * 1e3:8.0f} | '
          f'{harness.spread(r.seconds):>11s} | {rel} | {rate * flops / 1e9:7.2f} | '
          f'{comp:9.1f} |')
  print()
  for r in results:
    if r.info:
      print(f'  {r.variant.name}: {r.info.get("version")}; {r.info.get("threads")}; '
            f'setup {r.info.get("setup_s", 0):.1f} s (first-step warm-up {r.info.get("warmup_s", 0):.1f} s)')
  print()
  for ours_name, what, target in (('jax', 'train step', 1.5), ('jax_infer', 'inference', 1.0)):
    ours = next((r for r in results if r.variant.name == ours_name and r.seconds), None)
    peers = [r for r in results if r.seconds and _is_infer(r.variant.name) == (ours_name != 'jax')
             and VARIANTS[split_variant(r.variant.name)[0]][1]['kind'] != 'jax']
    if ours and peers:
      best = min(peers, key=lambda r: r.median)
      ratio = best.median / ours.median
      print(f'SUMMARY: JAX {what} {BATCH / ours.median:.2f} samples/s vs fastest peer '
            f'{best.variant.name} {BATCH / best.median:.2f} samples/s: {ratio:.2f}x (target >= '
            f'{target}: {"met" if ratio >= target else "MISSED"})')
    elif ours:
      print(f'SUMMARY: JAX {what} {BATCH / ours.median:.2f} samples/s (no peer rows measured)')


def _is_infer(name: str) -> bool:
  return bool(VARIANTS[split_variant(name)[0]][1].get('infer'))


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('variants', DEFAULT_VARIANTS,
                      'Comma-separated rows to time; known: ' + ', '.join(VARIANTS))
  flags.DEFINE_integer('rounds', 5, 'Interleaved timed rounds; the median is reported.')
  flags.DEFINE_integer('warmup_rounds', 1, 'Untimed interleaved rounds before the timed ones.')
  flags.DEFINE_integer('steps', 5, 'Consecutive steps per variant per round, timed together: the '
                       'steady rate a training loop or a library predict sees, not one cold call '
                       'after the other rows ran.')
  flags.DEFINE_bool('parallel_setup', True,
                    'Build/compile all workers at once (faster; compile times then overlap).')
  flags.DEFINE_string('worker', None, 'Internal: run as the worker process of this variant.')


if __name__ == '__main__':
  worker = harness.parse_worker_flag(sys.argv)
  if worker is not None:
    harness.serve(lambda: make_runner(worker))
  else:
    from absl import app  # pylint: disable=g-import-not-at-top
    _define_flags()
    app.run(main)
