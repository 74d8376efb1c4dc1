"""The gRPC edge of navi: TF Serving and KServe V2 services, health, TLS.

``NaviServer`` (app.py) wires the services to a ``ModelRegistry``; codec.py
turns tensor messages into numpy arrays and back; status.py is the one place
where ``NaviError`` codes become gRPC status codes.
"""
