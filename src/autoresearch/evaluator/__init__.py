"""The trusted side of a run: it serves the data, owns the clock, loads the handed-over model and scores it.

Nothing here runs train.py's code; the harness fingerprint covers exactly this package.
"""
