"""Generated protobuf/gRPC modules (built from protos/ by setup.py), and their pool.

Our .proto files keep TensorFlow's and TF Serving's file names and packages
(``tensorflow/core/framework/tensor.proto``, ``tensorflow.serving.*``): the
wire names, gRPC method paths and ``Any`` type URLs must be the official ones.
TensorFlow registers its own copies of those files in protobuf's default
descriptor pool, and a second file of the same name there is an error, so a
process that serves a SavedModel (the tf runtime imports TensorFlow) could not
hold both. Our generated modules therefore build into ``POOL``, a pool of
their own (setup.py rewrites ``descriptor_pool.Default()`` to it).
"""
from google.protobuf import any_pb2, descriptor_pool, wrappers_pb2

#: the descriptor pool of every navi._proto module
POOL = descriptor_pool.DescriptorPool()

# well-known types our files import; their classes resolve by full name, so
# Any.Pack/Unpack keep working on messages of this pool
for _module in (any_pb2, wrappers_pb2):
    POOL.AddSerializedFile(_module.DESCRIPTOR.serialized_pb)
del _module


def add_file_of(module) -> None:
    """Also describe ``module``'s .proto in POOL (e.g. grpc health, for reflection)."""
    try:
        POOL.FindFileByName(module.DESCRIPTOR.name)
    except KeyError:
        POOL.AddSerializedFile(module.DESCRIPTOR.serialized_pb)
