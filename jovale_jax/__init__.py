"""JoVALE in JAX / Flax NNX. Where things live (README.md, "Layout"):

* ``models/``: the Flax modules (config in, arrays out), with ``models/batch.py``, the batch
  described once (``batch_spec``: every key's shape, dtype and sizing config field);
  ``sharding.py``: mesh, logical axes, shardings, host batch <-> global arrays. Importing these
  loads no data or training stack.
* ``state.py``: ``ShardedModel``, the model sharded on a mesh, built once (``create``,
  ``load_trained``, ``restore_newest``); ``programs.py``: its two jitted programs, the train step
  and ``predict`` (``predict_batch``, the one way to score a host batch); ``train.py``: the
  training loop only; ``optim.py``, ``losses.py``, ``checkpoint.py``, ``distributed.py``
  (several processes), ``runtime.py`` (process-wide JAX settings), ``run_log.py`` (what a run
  shows on the console and writes to its workdir).
* ``datasets/``, ``input_pipeline.py``, ``audio_features.py``, ``assignment.py``: data.
* ``evaluate.py`` and ``evaluation/`` (AVA protocol, frame mAP, the detections CSV);
  ``detect/``: a trained model on any video; ``visualize.py``, ``box_ops.py``;
  ``attention.py``: the paper's Figure 6; ``demo.py``: ``make demo``; ``ablate.py``: the paper's
  ablation tables.
* ``bench/``: measurements (``launch.py bench``: speed, memory, input, evaluation, peers);
  ``flops.py``: parameters and MACs per component; ``convert/``: pretrained weights;
  ``configs``: the presets (the repository's ``configs/``).
"""
