"""Backends: each module registers itself in `registry.BACKENDS`; `base.py` holds the run
loop that the device executors share, `host.py` the Feeder and Receiver work on the host."""
