"""The BPR Thrift IDL loaded with thriftpy2 (tests, tools, `navi inspect`; never the hot path)."""
from __future__ import annotations

import functools
from pathlib import Path

_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "thrift" / "bpr.thrift",  # source checkout / editable install
    Path(__file__).resolve().parent / "_idl" / "bpr.thrift",  # copied in by the build for wheels
)


@functools.lru_cache(maxsize=1)
def bpr_thrift():
    """The thriftpy2 module of thrift/bpr.thrift."""
    import thriftpy2

    for path in _CANDIDATES:
        if path.is_file():
            return thriftpy2.load(str(path), module_name="navi_bpr_thrift")
    raise FileNotFoundError("bpr.thrift not found in " + ", ".join(map(str, _CANDIDATES)))


def decode_bpr(payload: bytes):
    """A thriftpy2 BatchPredictionRequest object decoded from ``payload``."""
    from thriftpy2.protocol import TCyBinaryProtocolFactory
    from thriftpy2.utils import deserialize

    return deserialize(bpr_thrift().BatchPredictionRequest(), payload, TCyBinaryProtocolFactory())


def encode(obj) -> bytes:
    """Serialize a thriftpy2 struct with the binary protocol."""
    from thriftpy2.protocol import TCyBinaryProtocolFactory
    from thriftpy2.utils import serialize

    return serialize(obj, TCyBinaryProtocolFactory())
