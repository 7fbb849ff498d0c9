"""Trained weights from elsewhere, read without their frameworks (issue #31).

``tf_checkpoint`` reads a TensorFlow V2 checkpoint bundle with numpy only;
``musicnn`` maps the musicnn taggers' variables onto the Flax port
(``melgenre_jax/models/musicnn.py``) and writes an ordinary workdir.
"""
