"""The reference dual-branch CNN-LSTM in PyTorch (benchmark peer only).

Same layers, shapes and hyperparameters as ``melgenre_jax.models.crnn.DualBranchCRNN``
at the reference config: input log-mel ``[B, frames, mels]``; per branch
2 x [Conv SAME -> BatchNorm(eps 1e-3, Keras momentum 0.99) -> LeakyReLU(0.3)
-> MaxPool (floor) -> Dropout(0.2)], the map read as ``[B, T', F' * C]``
(mel-major, channel-minor, as the JAX model) by LSTM(128, all steps) ->
LSTM(32, last step); both branch summaries -> Dense(num_classes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class ConvBlock(nn.Sequential):

  def __init__(self, cin: int, cout: int, kernel: Sequence[int], pool: Sequence[int],
               dropout: float, leaky_slope: float, bn_momentum: float):
    super().__init__(
        nn.Conv2d(cin, cout, tuple(kernel), padding='same'),
        # torch's momentum weighs the new batch: 1 - Keras' 0.99.
        nn.BatchNorm2d(cout, eps=1e-3, momentum=1.0 - bn_momentum),
        nn.LeakyReLU(leaky_slope),
        nn.MaxPool2d(tuple(pool)),  # stride = window, floor mode
        nn.Dropout(dropout),
    )
    nn.init.kaiming_normal_(self[0].weight, nonlinearity='relu')  # He normal
    nn.init.zeros_(self[0].bias)


class Branch(nn.Module):

  def __init__(self, n_mels: int, features: int, num_blocks: int, kernel: Sequence[int],
               pool: Sequence[int], lstm_sizes: Sequence[int], dropout: float,
               leaky_slope: float, bn_momentum: float):
    super().__init__()
    blocks, cin, f = [], 1, n_mels
    for _ in range(num_blocks):
      blocks.append(ConvBlock(cin, features, kernel, pool, dropout, leaky_slope, bn_momentum))
      cin, f = features, f // pool[1]
    self.cnn = nn.Sequential(*blocks)
    lstms, width = [], f * features
    for size in lstm_sizes:
      lstms.append(nn.LSTM(width, size, batch_first=True))
      width = size
    self.lstms = nn.ModuleList(lstms)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.cnn(x)  # [B, C, T', F']
    b, c, t, f = x.shape
    seq = x.permute(0, 2, 3, 1).reshape(b, t, f * c)
    for lstm in self.lstms:
      seq, _ = lstm(seq)
    return seq[:, -1, :]


class DualBranchCRNN(nn.Module):
  """Log-mel ``[B, frames, mels]`` -> logits ``[B, num_classes]``."""

  def __init__(self, num_classes: int = 10, n_mels: int = 128, features: int = 32,
               num_blocks: int = 2, branch_a=((5, 5), (4, 4)), branch_b=((3, 3), (2, 2)),
               lstm_sizes: Sequence[int] = (128, 32), dropout: float = 0.2,
               leaky_slope: float = 0.3, bn_momentum: float = 0.99):
    super().__init__()
    common = dict(n_mels=n_mels, features=features, num_blocks=num_blocks,
                  lstm_sizes=lstm_sizes, dropout=dropout, leaky_slope=leaky_slope,
                  bn_momentum=bn_momentum)
    self.branch_a = Branch(kernel=branch_a[0], pool=branch_a[1], **common)
    self.branch_b = Branch(kernel=branch_b[0], pool=branch_b[1], **common)
    self.head = nn.Linear(2 * lstm_sizes[-1], num_classes)
    nn.init.kaiming_normal_(self.head.weight, nonlinearity='relu')
    nn.init.zeros_(self.head.bias)

  def forward(self, spec: torch.Tensor) -> torch.Tensor:
    x = spec.unsqueeze(1)  # [B, 1, T, F]
    return self.head(torch.cat([self.branch_a(x), self.branch_b(x)], dim=-1))


def kernel_and_other_params(model: nn.Module) -> tuple[list, list]:
  """Conv/linear/LSTM weights (L2-penalised, as the JAX kernels) vs. biases and BN."""
  kernels, others = [], []
  for name, p in model.named_parameters():
    is_bn = '.1.' in name and 'cnn' in name  # ConvBlock index 1 is BatchNorm
    (kernels if 'weight' in name and not is_bn else others).append(p)
  return kernels, others
