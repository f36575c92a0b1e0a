"""JoVALE in JAX / Flax NNX. Where things live (README.md, "Layout"):

* ``models/``: the Flax modules (config in, arrays out); ``sharding.py``: mesh, logical axes,
  shardings. Importing these loads no data or training stack.
* ``state.py``: the model and optimizer state on a mesh, built once; ``predict_batch``, the one
  way to score a host batch; ``load_trained``. ``train.py``: the training loop only;
  ``run_log.py``: what a run shows on the console and writes to its workdir.
* ``datasets/``, ``input_pipeline.py``, ``audio_features.py``, ``assignment.py``: data.
* ``evaluate.py`` and ``evaluation/`` (AVA protocol, frame mAP, the detections CSV);
  ``detect/``: a trained model on any video; ``demo.py``: ``make demo`` and the ablation.
* ``bench/``: measurements (``launch.py bench``); ``flops.py``; ``convert/``: pretrained weights.
"""
