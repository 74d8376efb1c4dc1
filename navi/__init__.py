"""navi: a model-serving daemon with TF Serving and KServe V2 gRPC APIs."""

__version__ = "0.1.0"
