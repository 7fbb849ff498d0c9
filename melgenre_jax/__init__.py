"""melgenre_jax: music-genre classification with a dual-branch CNN-LSTM in JAX/Flax."""

__version__ = '0.1.0'
