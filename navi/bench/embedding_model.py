"""An ONNX ranking model whose bytes are mostly an embedding table: the shape of
model for which sharing weights between worker processes matters
(``navi.plugins.onnx_shared``; measured in benchmarks/bench_workers.py).

``ids`` (int64, [batch, IDS_PER_ROW]) -> Gather from ``table`` [rows, dim] ->
sum over the ids -> MatMul ``hidden`` [dim, hidden] -> Relu -> MatMul
``out_w`` [hidden, 1] -> Sigmoid -> ``score`` [batch, 1]. Weights are seeded,
so two builds with the same arguments write the same file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IDS_INPUT = "ids"
SCORE_OUTPUT = "score"
IDS_PER_ROW = 8


def write_embedding_model(path: Path, rows: int, dim: int = 64, hidden: int = 4096, seed: int = 0) -> int:
    """Write the model to ``path`` (a ``model.onnx``); returns its weight bytes."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "table": rng.standard_normal((rows, dim), dtype=np.float32),
        "hidden": (rng.standard_normal((dim, hidden), dtype=np.float32) / np.sqrt(dim)).astype(np.float32),
        "out_w": (rng.standard_normal((hidden, 1), dtype=np.float32) / np.sqrt(hidden)).astype(np.float32),
        "axes": np.array([1], dtype=np.int64),
    }
    nodes = [
        helper.make_node("Gather", ["table", IDS_INPUT], ["embedded"]),
        helper.make_node("ReduceSum", ["embedded", "axes"], ["pooled"], keepdims=0),
        helper.make_node("MatMul", ["pooled", "hidden"], ["hidden_pre"]),
        helper.make_node("Relu", ["hidden_pre"], ["hidden_act"]),
        helper.make_node("MatMul", ["hidden_act", "out_w"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], [SCORE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes, "navi_embedding_ranker",
        [helper.make_tensor_value_info(IDS_INPUT, TensorProto.INT64, ["batch", IDS_PER_ROW])],
        [helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(value, name) for name, value in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return sum(value.nbytes for value in weights.values())


def ids_batch(rows: int, table_rows: int, seed: int = 1) -> np.ndarray:
    """A batch of ``rows`` rows of random ids into a table of ``table_rows``."""
    return np.random.default_rng(seed).integers(0, table_rows, (rows, IDS_PER_ROW), dtype=np.int64)


__all__ = ["IDS_INPUT", "IDS_PER_ROW", "SCORE_OUTPUT", "ids_batch", "write_embedding_model"]
