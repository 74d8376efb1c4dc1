"""A readable (JSON-ready) description of one serialized BPR."""
from __future__ import annotations

from navi.errors import DecodeError


def _plain(value, max_items):
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        items = list(value.items())
        shown = {str(k): _plain(v, max_items) for k, v in items[:max_items]}
        if max_items is not None and len(items) > max_items:
            shown["..."] = f"{len(items) - max_items} more of {len(items)}"
        return shown
    if isinstance(value, (list, set, tuple)):
        items = sorted(value) if isinstance(value, set) else list(value)
        shown = [_plain(v, max_items) for v in items[:max_items]]
        if max_items is not None and len(items) > max_items:
            shown.append(f"... {len(items) - max_items} more of {len(items)}")
        return shown
    if hasattr(value, "thrift_spec"):
        return {name: _plain(getattr(value, name), max_items)
                for _, (_, name, *_rest) in sorted(value.thrift_spec.items())
                if getattr(value, name) is not None}
    return value


def describe_bpr(payload: bytes, max_items: int | None = 20) -> dict:
    """The BPR's fields as plain data, each container cut to ``max_items`` entries."""
    from navi._fast import _bpr_ref
    from navi.idl import decode_bpr

    # Validate with our own decoder first: thriftpy2 is lenient about truncation.
    try:
        _bpr_ref._index_bpr(_bpr_ref._Reader(payload), 1 << 30)
    except _bpr_ref._Fail as fail:
        raise DecodeError(_bpr_ref.ERROR_REASONS[fail.code], fail.pos, fail.what) from None
    bpr = decode_bpr(payload)
    described = _plain(bpr, max_items)
    described["candidates"] = len(bpr.individualFeaturesList or [])
    return described
