"""The import graph: reusing the model costs no data or training stack (pyproject's base
install)."""

import os
import pathlib
import subprocess
import sys
import tomllib

REPO = pathlib.Path(__file__).resolve().parent.parent
HEAVY = ("tensorflow", "tensorflow_datasets", "librosa", "av", "matplotlib", "torch")


def test_models_and_sharding_import_no_heavy_package():
    code = (
        "import sys, jovale_jax.models, jovale_jax.sharding; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_base_install_is_what_the_modules_need_and_test_pulls_everything():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].split("[")[0] for d in project["dependencies"]}
    assert names == {"jax", "flax", "numpy", "ml-collections"}
    extras = project["optional-dependencies"]
    assert "jovale-jax[train,convert]" in extras["test"]
    assert "jovale-jax[data]" in extras["train"]
    everything = " ".join(d for deps in extras.values() for d in deps)
    for package in (
        "tensorflow-cpu",
        "tensorflow-datasets",
        "librosa",
        "av",
        "matplotlib",
        "optax",
        "orbax-checkpoint",
        "transformers",
        "torch==2.13.0",
    ):
        assert package in everything
    assert "chex" not in everything and "einops" not in everything


def test_launch_keeps_keras_out_of_tensorflow_import():
    """launch.py's TF_USE_LEGACY_KERAS: TensorFlow loads without Keras (nor the matplotlib and
    scikit-learn Keras pulls in), and tf.data still works."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # conftest sets it
    code = (
        "import sys, launch, jovale_jax.input_pipeline as p; "
        "tf = p.tf; total = tf.data.Dataset.range(3).reduce(tf.constant(0, tf.int64), tf.add); "
        "print(int(total), "
        "sorted({m.split('.')[0] for m in sys.modules} & {'keras', 'sklearn', 'matplotlib'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "3 []"
