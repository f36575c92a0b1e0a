"""Reading downloaded pickles without running them: UCF101-24 / JHMDB51-21 annotations
(``UCF101v2-GT.pkl``, ``JHMDB-GT.pkl``, Python-2 pickles) and dense-proposal pickles.

``pickle.load`` calls whatever global a pickle names, so opening a file from the internet can run
any code. :func:`load` allows only the globals these files hold: builtin containers and numpy's
array and scalar reconstruction (under numpy 1's and numpy 2's module names), and the codec call
that protocol 2 uses for bytes. Any other global is an :class:`UnsafePickleError` naming the file
and the global, raised before it is called.
"""

from __future__ import annotations

import pickle
from typing import Any

ALLOWED = (
    {("builtins", n) for n in ("set", "frozenset", "complex", "slice", "bytearray", "range")}
    | {
        (module, name)
        for module in ("numpy.core.multiarray", "numpy._core.multiarray")
        for name in ("_reconstruct", "scalar")
    }
    | {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
    }
)
PY2_MODULES = {"__builtin__": "builtins"}  # Python-2 pickles name builtins so


class UnsafePickleError(ValueError):
    """A pickle names a global outside :data:`ALLOWED`."""


class _Restricted(pickle.Unpickler):
    def __init__(self, file, path: str):
        super().__init__(file, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str) -> Any:
        module = PY2_MODULES.get(module, module)
        if (module, name) not in ALLOWED:
            raise UnsafePickleError(
                f"{self.path}: refused to load the global {module}.{name}: annotation and "
                f"proposal pickles hold only builtin containers and numpy arrays (this file may "
                f"run code when unpickled; get it from the dataset's source)"
            )
        return super().find_class(module, name)


def load(path: str) -> Any:
    """The object in pickle ``path`` (Python-2 strings read as latin-1), refusing any global
    outside :data:`ALLOWED`."""
    with open(path, "rb") as f:
        return _Restricted(f, path).load()
