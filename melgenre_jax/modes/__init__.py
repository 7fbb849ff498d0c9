"""What main.py can do with a trained workdir besides training: eval, predict, export, tune."""
