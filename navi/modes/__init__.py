"""The two input modes of a served model: one strategy class each.

``ServedModel`` (navi.pipeline) picks one at construction and hands it every
request and batch:

* ``DenseMode``: the request carries the model's inputs by name.
* ``BprMode`` (the original's "home" converter): the request carries one string
  tensor of serialized BatchPredictionRequests, converted per batch.

Each has the same three steps: construction (from the model's signature:
what clients see, ``signature``), ``prepare`` (validate one request in the
caller's thread into a typed payload and its row count) and ``process`` (run
one batch of those payloads, one result per task).
"""
from navi.modes.bpr import BprMode, BprPayload, wants_converter
from navi.modes.dense import DenseMode, DensePayload
from navi.modes.shared import cast_into, castable

__all__ = ["BprMode", "BprPayload", "DenseMode", "DensePayload", "cast_into", "castable", "wants_converter"]
