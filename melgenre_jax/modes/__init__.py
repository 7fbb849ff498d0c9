"""The modes main.py runs (dispatch.py picks one): eval, predict, embed, export, calibrate, cv, tune.

Training itself is the train/ package, which modes build on; nothing outside
modes/ imports them (tests/test_imports.py).
"""
