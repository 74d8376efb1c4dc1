#!/usr/bin/env python
"""The least a Python TF Predict server on grpcio can do per request: the floor under navi's CPU.

A sync grpcio server (handler threads as `navi serve`'s default) whose one
handler parses the raw PredictRequest with navi's codec, runs the model's
ONNX session (one intra-op thread, as navi's default) and encodes the answer:
no batching, metrics, data plane, admission or validation. Set side by side
with `navi serve` and `navi bench bare-server` (constant bytes), it says how
much of navi's CPU per request over the bare server any Python request path
on grpcio and ONNX Runtime's binding pays anyway (benchmarks/RESULTS.md,
"Per-request cost").

Usage: python benchmarks/minimal_predict_server.py --model-dir models/dense [--port 8600]
       then: navi bench serve --target minimal=127.0.0.1:8600 --model dense --workload dense ...
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="versions of one ONNX model")
    parser.add_argument("--port", type=int, default=8600)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)

    import onnxruntime as ort

    from navi import codec
    from navi.allocator import tune_allocator
    from navi.bench.servers import serve_every_method, serve_until_signalled
    from navi.settings import default_grpc_threads

    tune_allocator()  # as `navi serve`
    version_dir = max((d for d in args.model_dir.iterdir() if d.is_dir() and d.name.isdigit()),
                      key=lambda d: int(d.name))
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(next(version_dir.glob("*.onnx"))), options,
                                   providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    run = session._sess.run  # the binding itself, as navi's ONNX plugin calls it
    spec = codec.model_spec_bytes(args.model_dir.name, int(version_dir.name), "serving_default")

    def predict(raw: bytes, context) -> bytes:
        request, _ = codec.parse_predict_request(raw)
        feeds = {name: codec.tensor_proto_to_ndarray(request.inputs[name], name) for name in request.inputs}
        return codec.encode_predict_response(dict(zip(names, run(names, feeds, None))), spec)

    server, port = serve_every_method(predict, args.port, default_grpc_threads(), args.host)
    print(f"minimal Predict server on {args.host}:{port}", file=sys.stderr)
    serve_until_signalled(server)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
