"""Model families, one module each, and the registry that builds them.

``config.model.name`` picks the family (``crnn``, the reference, by default);
each family module has ``create(model_config, num_classes, bn_axis_name)`` and
``embedding_dim(model_config)``, and may have ``is_frozen(model_config, layer)``
(top-level parameter groups kept fixed while the rest trains). Every family maps a model input ``[B, ...]``
to logits, and with ``return_embedding=True`` to ``(logits, embedding)``.
"""

from __future__ import annotations

import types
from typing import Any

import flax.linen as nn
import jax
import ml_collections

from melgenre_jax.errors import ConfigError
from melgenre_jax.models import crnn, musicnn, vgg

FAMILIES: dict[str, types.ModuleType] = {'crnn': crnn, 'musicnn': musicnn, 'vgg': vgg}
DEFAULT_FAMILY = 'crnn'


def family(model_config: ml_collections.ConfigDict) -> types.ModuleType:
  """The module of ``config.model.name`` (configs without a name are the reference)."""
  name = str(model_config.get('name', DEFAULT_FAMILY))
  if name not in FAMILIES:
    raise ConfigError(f'Unknown model family config.model.name={name!r}; '
                      f'choose one of {sorted(FAMILIES)}.')
  return FAMILIES[name]


def create_model(model_config: ml_collections.ConfigDict, num_classes: int,
                 bn_axis_name: str | None = None) -> nn.Module:
  """Builds the family's model from ``config.model``."""
  return family(model_config).create(model_config, num_classes, bn_axis_name=bn_axis_name)


def embedding_dim(model_config: ml_collections.ConfigDict) -> int:
  """Width of the family's embedding (the head's input)."""
  return family(model_config).embedding_dim(model_config)


def frozen_mask(model_config: ml_collections.ConfigDict, params: Any) -> Any:
  """True on every parameter the family keeps fixed (``config.model.frozen``)."""
  is_frozen = getattr(family(model_config), 'is_frozen', None)
  return {layer: jax.tree.map(lambda _, f=bool(is_frozen and is_frozen(model_config, layer)): f,
                              subtree)
          for layer, subtree in params.items()}


def family_freezes(model_config: ml_collections.ConfigDict) -> bool:
  """Whether ``config.model.frozen`` asks the family to keep some layers fixed."""
  return bool(model_config.get('frozen', '')) and hasattr(family(model_config), 'is_frozen')
