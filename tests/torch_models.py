"""model.json of the typed TorchScript test models (one input and output per Predict dtype)."""

TYPED_SPEC = {
    "inputs": [
        {"name": "x", "dtype": "float32", "shape": [-1, 4]},
        {"name": "weight", "dtype": "float64", "shape": [-1]},
        {"name": "small", "dtype": "int32", "shape": [-1]},
        {"name": "ids", "dtype": "int64", "shape": [-1, 3]},
        {"name": "mask", "dtype": "bool", "shape": [-1]},
    ],
    "outputs": [
        {"name": "score", "dtype": "float32", "shape": [-1, 2]},
        {"name": "weighted", "dtype": "float64", "shape": [-1]},
        {"name": "small_out", "dtype": "int32", "shape": [-1]},
        {"name": "id_sum", "dtype": "int64", "shape": [-1]},
        {"name": "mask_out", "dtype": "bool", "shape": [-1]},
    ],
}
