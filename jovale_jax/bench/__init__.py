"""Measurements, each a subcommand of `launch.py bench` (bench/README.md has the numbers).

* ``step.py``: the compiled train step and forward pass (time, MACs, matmul ratio, memory) and
  the cost of ``model.remat`` (``bench remat``);
* ``memory.py``: the train step's compiled memory per device and per clip (``bench memory``), and
  the memory statistics of a compiled program that ``step.py`` reports too;
* ``profile.py``: where a program's time goes, from ``jax.profiler`` events (``bench profile``);
* ``input.py``: examples per second through the input pipeline, whole and by stage;
* ``eval.py``: the AVA evaluator and the detections CSV at AVA-val size (``bench eval``);
* ``loop.py``: the train loop fed by the pipeline against a device-resident batch (``bench loop``);
* ``peers.py``: our models, input and evaluator against the PyTorch stack and the official AVA
  evaluator, side by side (``bench peers``; ``pyslowfast_ava.py`` is its PySlowFast-style loader).

Importing this package imports nothing heavy: each module loads what it measures.
"""
