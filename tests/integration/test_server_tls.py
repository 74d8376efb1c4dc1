"""``navi serve`` with mutual TLS from ``--ssl-dir``, configured through ``--config``."""
from __future__ import annotations

import datetime
import urllib.request

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from onnx import TensorProto as T
from onnx import helper
from prometheus_client.parser import text_string_to_metric_families

from navi._proto.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from navi import codec

NOT_AFTER = datetime.datetime(2031, 5, 17, 12, 0, tzinfo=datetime.timezone.utc)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject, issuer, public_key, signing_key, *, ca=False, dns=None):
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(_name(issuer)).public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(NOT_AFTER)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _pem(obj) -> bytes:
    if isinstance(obj, x509.Certificate):
        return obj.public_bytes(serialization.Encoding.PEM)
    return obj.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for "localhost" and a client certificate, as PEM bytes."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("navi test CA", "navi test CA", ca_key.public_key(), ca_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", "navi test CA", server_key.public_key(), ca_key, dns="localhost")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("client", "navi test CA", client_key.public_key(), ca_key)
    ssl_dir = tmp_path_factory.mktemp("ssl")
    (ssl_dir / "server.crt").write_bytes(_pem(server))
    (ssl_dir / "server.key").write_bytes(_pem(server_key))
    (ssl_dir / "server.chain").write_bytes(_pem(ca))
    return {"dir": ssl_dir, "ca": _pem(ca), "client": _pem(client), "client_key": _pem(client_key),
            "ca_key": _pem(ca_key)}


def _write_adder(root) -> None:
    """root/adder/1/model.onnx: out = a + b, float [N, 2] each."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["out"])], "add",
        [helper.make_tensor_value_info(n, T.FLOAT, ["N", 2]) for n in ("a", "b")],
        [helper.make_tensor_value_info("out", T.FLOAT, ["N", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (root / "adder" / "1").mkdir(parents=True)
    (root / "adder" / "1" / "model.onnx").write_bytes(model.SerializeToString())


@pytest.fixture(scope="module")
def tls_navi(start_navi, pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-repo")
    _write_adder(root)
    config = root / "navi.yaml"
    config.write_text(
        f"ssl_dir: {pki['dir']}\n"
        "models:\n"
        "  - model_dir: adder\n"  # relative to the config file
        "    inputs: []\n"
        "    outputs: []\n"
        "    batching: {batch_timeout_ms: 0}\n"
    )
    return start_navi("--config", config)


def _request():
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "adder"
    codec.ndarray_to_tensor_proto(np.ones((1, 2), np.float32), request.inputs["a"])
    codec.ndarray_to_tensor_proto(np.full((1, 2), 2, np.float32), request.inputs["b"])
    return request


def _secure_channel(navi, pki, with_client_cert: bool):
    credentials = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"],
        private_key=pki["client_key"] if with_client_cert else None,
        certificate_chain=pki["client"] if with_client_cert else None,
    )
    return grpc.secure_channel(navi.address, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def test_mutual_tls(tls_navi, pki):
    assert "(mutual TLS)" in tls_navi.log_text()
    with _secure_channel(tls_navi, pki, with_client_cert=True) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=30)
    out = codec.tensor_proto_to_ndarray(response.outputs["out"])
    np.testing.assert_array_equal(out, np.full((1, 2), 3, np.float32))


def test_client_without_certificate_is_refused(tls_navi, pki):
    with _secure_channel(tls_navi, pki, with_client_cert=False) as channel:
        with pytest.raises(grpc.RpcError) as info:
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=10)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE


def test_plaintext_client_is_refused(tls_navi):
    with tls_navi.channel() as channel:
        with pytest.raises(grpc.RpcError):
            prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=10)


def test_cert_expiry_metric(tls_navi):
    text = urllib.request.urlopen(f"http://127.0.0.1:{tls_navi.prometheus_port}/metrics", timeout=10).read()
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    (sample,) = families[":navi:cert_expiry_epoch"].samples
    assert sample.value == NOT_AFTER.timestamp()


# ---- server.crt signed by an intermediate CA that only server.chain holds

@pytest.fixture(scope="module")
def intermediate_pki(tmp_path_factory):
    """root CA -> intermediate CA -> server; server.chain = intermediate + root (as a CA hands them
    out); the client trusts the root alone and has a certificate the root signed."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = _certificate("navi root CA", "navi root CA", root_key.public_key(), root_key, ca=True)
    mid_key = ec.generate_private_key(ec.SECP256R1())
    mid = _certificate("navi intermediate CA", "navi root CA", mid_key.public_key(), root_key, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _certificate("localhost", "navi intermediate CA", server_key.public_key(), mid_key,
                          dns="localhost")
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("client", "navi root CA", client_key.public_key(), root_key)
    ssl_dir = tmp_path_factory.mktemp("ssl-chain")
    (ssl_dir / "server.crt").write_bytes(_pem(server).rstrip(b"\n"))  # no final newline: still joined right
    (ssl_dir / "server.key").write_bytes(_pem(server_key))
    (ssl_dir / "server.chain").write_bytes(_pem(mid) + _pem(root))
    return {"dir": ssl_dir, "ca": _pem(root), "client": _pem(client), "client_key": _pem(client_key)}


@pytest.fixture(scope="module")
def chain_navi(start_navi, intermediate_pki, tmp_path_factory):
    root = tmp_path_factory.mktemp("tls-chain-repo")
    _write_adder(root)
    return start_navi("--model-dir", root / "adder", "--input", "", "--output", "",
                      "--ssl-dir", intermediate_pki["dir"])


def test_server_presents_its_chain(chain_navi, intermediate_pki):
    """As the original: server.crt then server.chain, so a client trusting only the root verifies it."""
    with _secure_channel(chain_navi, intermediate_pki, with_client_cert=True) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=30)
    out = codec.tensor_proto_to_ndarray(response.outputs["out"])
    np.testing.assert_array_equal(out, np.full((1, 2), 3, np.float32))


def _https_predict(navi, pki, tmp_path, with_client_cert: bool):
    """POST a TF Serving REST :predict over HTTPS, trusting only ``pki``'s root."""
    import http.client
    import json
    import ssl

    context = ssl.create_default_context(cadata=pki["ca"].decode())
    if with_client_cert:
        (tmp_path / "client.crt").write_bytes(pki["client"])
        (tmp_path / "client.key").write_bytes(pki["client_key"])
        context.load_cert_chain(tmp_path / "client.crt", tmp_path / "client.key")
    connection = http.client.HTTPSConnection("localhost", navi.rest_port, context=context, timeout=30)
    try:
        body = json.dumps({"inputs": {"a": [[1.0, 1.0]], "b": [[2.0, 2.0]]}})
        connection.request("POST", "/v1/models/adder:predict", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_rest_port_has_the_same_mutual_tls(chain_navi, intermediate_pki, tmp_path):
    """The REST port presents server.crt + server.chain and requires a client certificate, as gRPC does."""
    status, body = _https_predict(chain_navi, intermediate_pki, tmp_path, with_client_cert=True)
    assert status == 200 and body == {"outputs": [[3.0, 3.0]]}
    import ssl

    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        _https_predict(chain_navi, intermediate_pki, tmp_path, with_client_cert=False)


# ---- who is refused: no certificate, an expired one, one from another CA, plaintext

def _client_channel(navi, ca_pem: bytes, cert_pem: bytes | None, key_pem: bytes | None):
    credentials = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem,
                                               certificate_chain=cert_pem)
    return grpc.secure_channel(navi.address, credentials,
                               options=[("grpc.ssl_target_name_override", "localhost")])


def _predict_code(channel) -> grpc.StatusCode:
    try:
        prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(_request(), timeout=10)
    except grpc.RpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def test_expired_client_certificate_is_refused(tls_navi, pki):
    ca_key = serialization.load_pem_private_key(pki["ca_key"], password=None)
    client_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = (
        x509.CertificateBuilder()
        .subject_name(_name("expired client")).issuer_name(_name("navi test CA"))
        .public_key(client_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=30)).not_valid_after(now - datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    with _client_channel(tls_navi, pki["ca"], _pem(expired), _pem(client_key)) as channel:
        assert _predict_code(channel) == grpc.StatusCode.UNAVAILABLE
    # the same CA's valid certificate is served on the same daemon
    with _client_channel(tls_navi, pki["ca"], pki["client"], pki["client_key"]) as channel:
        assert _predict_code(channel) == grpc.StatusCode.OK


def test_client_certificate_from_another_ca_is_refused(tls_navi, pki):
    other_key = ec.generate_private_key(ec.SECP256R1())
    # same subject name as the real CA: only the signature tells them apart
    other_ca = _certificate("navi test CA", "navi test CA", other_key.public_key(), other_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _certificate("client", "navi test CA", client_key.public_key(), other_key)
    with _client_channel(tls_navi, pki["ca"], _pem(client) + _pem(other_ca), _pem(client_key)) as channel:
        assert _predict_code(channel) == grpc.StatusCode.UNAVAILABLE


def test_plaintext_bytes_to_the_tls_port_get_no_grpc_answer(tls_navi):
    """An HTTP/2 preface in the clear: the TLS port answers no HTTP/2 frame and closes."""
    import socket

    with socket.create_connection(("127.0.0.1", tls_navi.port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        received = b""
        try:
            while len(received) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                received += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    # an HTTP/2 SETTINGS frame would start with a 3-byte length and type 0x04
    assert not (len(received) >= 4 and received[3] == 0x04), received[:32]
    assert b"PRI" not in received
