"""Real TensorFlow SavedModels for the tests: a tf.Module with every Predict dtype, and an
Estimator-style (TF1 builder) model exporting classify / regress / predict signatures.

Imported by the unit tests, and by the integration tests' model-building subprocess
(which keeps TensorFlow out of the process that drives the daemon).
"""
from __future__ import annotations

from pathlib import Path

import tensorflow as tf


class Typed(tf.Module):
    """One input of each dtype TF Serving's Predict carries; each output depends on one input."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable([[1.5], [-2.0]], dtype=tf.float32)

    @tf.function(input_signature=[
        tf.TensorSpec([None, 2], tf.float32, name="f32"),
        tf.TensorSpec([None], tf.float64, name="f64"),
        tf.TensorSpec([None], tf.int32, name="i32"),
        tf.TensorSpec([None, 3], tf.int64, name="i64"),
        tf.TensorSpec([None], tf.bool, name="flag"),
        tf.TensorSpec([None], tf.string, name="text"),
    ])
    def serve(self, f32, f64, i32, i64, flag, text):
        return {
            "score": tf.matmul(f32, self.w),
            "f64_out": f64 * 2.0 + 0.25,
            "i32_out": i32 + 7,
            "i64_out": tf.reduce_sum(i64, axis=1),
            "flag_out": tf.logical_not(flag),
            "text_len": tf.strings.length(text),
            "text_out": tf.strings.join([text, "!"]),
        }


def build_typed(path: Path) -> Path:
    module = Typed()
    tf.saved_model.save(module, str(path), signatures={"serving_default": module.serve})
    return path


def example(x0: float, x1: float) -> bytes:
    """A serialized tf.Example with float feature x = [x0, x1]."""
    feature = tf.train.Feature(float_list=tf.train.FloatList(value=[x0, x1]))
    return tf.train.Example(features=tf.train.Features(feature={"x": feature})).SerializeToString()


def build_estimator_style(path: Path) -> Path:
    """serving_default = classify, 'regress' = regress, 'predict' = predict, all on tf.Example."""
    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default():
        serialized = v1.placeholder(tf.string, [None], name="tf_example")
        features = v1.io.parse_example(serialized, {"x": tf.io.FixedLenFeature([2], tf.float32)})
        weights = v1.get_variable("w", initializer=tf.constant([[1.0, -1.0], [0.5, 2.0]]))
        scores = tf.nn.softmax(tf.matmul(features["x"], weights))
        classes = tf.broadcast_to(tf.constant([b"neg", b"pos"]), tf.shape(scores))
        value = tf.reduce_sum(features["x"], axis=1)
        utils = v1.saved_model.signature_def_utils
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(path))
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                "serving_default": utils.classification_signature_def(serialized, classes, scores),
                "regress": utils.regression_signature_def(serialized, value),
                "predict": utils.predict_signature_def({"examples": serialized}, {"scores": scores}),
            })
            builder.save()
    return path
