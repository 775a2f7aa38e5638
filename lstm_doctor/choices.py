"""The vocabularies the command line, the config file and the jobs share.

Defined once, here, in a module that imports nothing, so that ``--help`` and
the option parsers stay instant and every command offers the same names.
"""

LAYOUTS = ("btd", "tbd", "bct")
"""Input axes: (batch, time, features), (time, batch, features), (batch, channels, length)."""

MODEL_FORMATS = ("native", "tweet2vec", "lasagne", "torch", "keras", "onnx")
"""Model file formats, one importer each (``lstm_doctor.load``)."""

PRESETS = ("tweet2vec",)
"""Known codebases whose actual equations differ from their files' defaults."""

ENGINES = ("auto", "numpy", "fused", "pytensor")
"""Capture engines (``lstm_doctor.capture.engines``)."""

DEFAULT_ENGINE = "auto"

REPORT_FORMATS = ("text", "json", "html", "markdown", "junit", "github", "concise")
"""Report formats; each has a renderer in ``lstm_doctor.report.REPORTERS``."""

SEVERITIES = ("error", "warning", "info")

COLORS = ("auto", "always", "never")

TEXT_CLEANERS = ("tweet2vec", "none")

KERAS_ACTIVATIONS = ("sigmoid", "hard_sigmoid", "tanh", "softsign", "relu", "softplus", "linear")
"""Keras activation names ``--gate-activation`` and ``--activation`` accept (those lstm_doctor models)."""

ARCHITECTURE_FLAGS = {"gate_activation": "--gate-activation", "activation": "--activation",
                      "go_backwards": "--go-backwards"}
"""The Keras settings a user may state on the command line, by option field."""
