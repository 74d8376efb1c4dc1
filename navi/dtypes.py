"""The one dtype rule of the data plane: which request dtype may feed which model input.

Every path asks ``feeds``: the pipeline's request validation (``pipeline``),
the TensorFlow and PyTorch runtimes' own input check (``plugins.base.conform_inputs``);
``_fast.kernels`` compiles a conversion kernel for the pairs it allows that
the servers and the BPR converter produce.

Same dtype, or the same kind (float64 -> float32, int32 -> int64, ...);
strings (object, bytes, str) feed string inputs. Never across kinds: a float
sent to an integer input, or an integer to a float one, is a client bug, not
something to round silently. (JSON has one number type: the REST decoders give
an integer literal the model's float dtype before this rule is asked.)
"""
from __future__ import annotations

import numpy as np

#: numpy's dtype of string tensors (object arrays of bytes)
STRING = np.dtype(object)


def feeds(src: np.dtype, dst: np.dtype) -> bool:
    """Whether a request tensor of dtype ``src`` may feed a model input of dtype ``dst``."""
    if src == dst:
        return True
    if dst == STRING:
        return src.kind in "OSU"
    return src.kind == dst.kind and src.kind in "biuf"


__all__ = ["STRING", "feeds"]
