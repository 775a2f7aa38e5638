"""What every job that reads a model is told about it: the typed model selection.

The option classes of ``diagnose``, ``trace``, ``inspect``, ``what-if`` and
``featurize`` extend ``ModelSelection``, so ``open_model`` takes any of them by
type, not by the names of their attributes (``check`` and ``compare`` fill a
``DiagnoseOptions``).
"""

from __future__ import annotations

from dataclasses import dataclass

from lstm_doctor.load import LoadOptions, load_model
from lstm_doctor.model import LSTMModel


@dataclass(kw_only=True)
class ModelSelection:
    model: str  # an lstm.toml, its folder, or a framework file
    model_format: str | None = None  # None: detected from the name and content
    preset: str | None = None  # a known codebase's actual equations (tweet2vec)
    layer_prefix: str | None = None  # torch/lasagne: the submodule whose LSTM to load
    layer_name: str | None = None  # keras/onnx: the LSTM layer or node
    trust_pickle: bool = False  # allow arbitrary pickles (runs code from the file!)
    max_memory: str | None = None  # --max-memory: sizes the file declares are checked against it before reading
    # Keras settings a weights-only file leaves open (None: the file's, else the default)
    gate_activation: str | None = None  # --gate-activation: recurrent_activation
    activation: str | None = None  # --activation: candidate and cell output
    go_backwards: bool | None = None  # --go-backwards / --no-go-backwards

    def load_options(self) -> LoadOptions:
        return LoadOptions(
            preset=self.preset, layer_prefix=self.layer_prefix, layer_name=self.layer_name,
            trust_pickle=self.trust_pickle, max_memory=self.max_memory,
            gate_activation=self.gate_activation, activation=self.activation, go_backwards=self.go_backwards,
        )


def open_model(selection: ModelSelection) -> LSTMModel:
    """Load the selected model (``lstm_doctor.load``)."""
    return load_model(selection.model, selection.model_format, selection.load_options())
