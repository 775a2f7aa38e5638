"""Watch training: diagnose a fixed probe batch during training, log the headline metrics, warn, stop.

- ``TorchWatcher(model, probe)``: call ``watcher.step(step)`` once per training
  step (it returns True when training should stop);
- ``KerasCallback(probe)``: a ``keras.callbacks.Callback`` for ``model.fit``
  (built on first access, so this module does not import keras).

Both run ``lstm_doctor.diagnose(model, *probe)`` (the live route: the model's
own forward on the probe, in eval mode, without gradients) at step 0, before
training changes anything, so that a model that starts broken (every gate
pinned by gate weights drawn with mean +0.1) is flagged before its first epoch ends, and then:

- every ``every`` steps (``every_n_batches`` / ``every_n_epochs`` in Keras),
  or, by default (``every=None``), whenever the training time since the
  last check reaches the last check's cost × (1 − budget) / budget, so the
  diagnosis costs about ``budget`` of the training time whatever the
  model (``budget`` 3 % by default, under the 5 % target with room for jitter);
- each check logs ``Report.metrics()`` (saturated share per gate, max |c|,
  encoding cosine, input variance share, finding counts) under
  ``lstm_doctor/{module}/{metric}``: to Keras ``logs``, to a TensorBoard
  ``SummaryWriter`` (``writer=``, or ``log_dir=`` when torch.utils.tensorboard
  imports) and to ``history``;
- the first error-level finding raises one ``LSTMDoctorWarning`` (not one per
  check); with ``stop_on="error"`` (or "warning") training stops at that check.

No Lightning callback: Lightning is not installed here, and ``TorchWatcher``
needs only one line in a ``training_step``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

from lstm_doctor.api import diagnose
from lstm_doctor.capture.numpy_loop import one_blas_thread
from lstm_doctor.findings import Severity

DEFAULT_BUDGET = 0.03  # a share of training time; steady-state overhead ≈ this, below the 5 % target


class LSTMDoctorWarning(UserWarning):
    """An error-level finding appeared in a watched model."""


@dataclass
class Check:
    """One diagnosis during training."""

    step: int
    metrics: dict[str, float]
    codes: dict[str, list[str]]  # severity → "CODE module" entries
    seconds: float


@dataclass
class Watch:
    """The logic both callbacks share: when to diagnose, what to log, when to warn and stop.

    ``model``: the live ``torch.nn.Module`` or ``keras.Model``; ``probe``: what its forward takes
    (a batch, or a tuple of arguments); ``every``: steps between checks, or None for the
    time budget; ``stop_on``: None, "error" or "warning"; ``log``: called with
    (step, metrics) after every check; further ``diagnose`` keywords in ``options``.
    """

    model: Any
    probe: Any
    every: int | None = None
    budget: float = DEFAULT_BUDGET
    stop_on: str | None = None
    log: Callable[[int, dict[str, float]], None] | None = None
    options: dict = field(default_factory=dict)
    history: list[Check] = field(default_factory=list)
    warned: bool = False
    should_stop: bool = False
    last: Any = None  # the last Report
    _next_after: float = 0.0  # monotonic time before which a budgeted check waits

    def __post_init__(self):
        if self.stop_on not in (None, "error", "warning"):
            raise ValueError(f"stop_on={self.stop_on!r}: choose None, 'error' or 'warning'")
        if self.every is not None and self.every < 1:
            raise ValueError("every must be at least 1 step")
        if not 0 < self.budget < 1:
            raise ValueError("budget is a share of the training time, between 0 and 1")

    def due(self, step: int) -> bool:
        """Whether ``step`` gets a check: step 0 always, then by interval or time budget."""
        if not self.history:
            return True
        if self.every is not None:
            return step % self.every == 0
        return time.perf_counter() >= self._next_after

    def check(self, step: int):
        """Diagnose the probe now; log, warn, decide whether to stop. Returns the ``Report``."""
        args = self.probe if isinstance(self.probe, tuple) else (self.probe,)
        started = time.perf_counter()
        # One BLAS thread: inside a training process the framework's own threads keep the
        # cores busy, and NumPy's second OpenBLAS thread made the analyzers' small SVDs
        # ~100x slower (4 s instead of 40 ms per check, benchmarks/bench_callback.py).
        with one_blas_thread():
            report = diagnose(self.model, *args, **self.options)
        seconds = time.perf_counter() - started
        self._next_after = time.perf_counter() + seconds * (1 - self.budget) / self.budget
        codes: dict[str, list[str]] = {}
        for f in report.findings:
            codes.setdefault(f["severity"], []).append(f"{f['code']} {f['module']}")
        metrics = report.metrics()
        self.history.append(Check(step, metrics, codes, seconds))
        self.last = report
        if codes.get("error") and not self.warned:
            self.warned = True
            warnings.warn(
                f"lstm_doctor: error-level findings at step {step}: {', '.join(sorted(set(codes['error'])))} "
                "(report: watcher.last; lstm-doctor explain CODE)",
                LSTMDoctorWarning,
                stacklevel=3,
            )
        if self.stop_on is not None:
            rank = Severity[self.stop_on]
            if any(Severity[s] >= rank and v for s, v in codes.items()):
                self.should_stop = True
        if self.log is not None:
            self.log(step, metrics)
        return report


class TorchWatcher:
    """Diagnose a PyTorch model's probe batch during training.

    ``watcher = TorchWatcher(model, probe_batch, every=None, stop_on=None, writer=None, log_dir=None)``;
    in the loop, ``if watcher.step(step): break``. ``writer``: anything with
    ``add_scalar(tag, value, step)`` (a ``torch.utils.tensorboard.SummaryWriter``); ``log_dir``
    creates one when tensorboard is installed (else a warning, and only ``history`` is kept).
    ``history`` lists every ``Check``; ``last`` is the last ``Report``.
    """

    def __init__(
        self,
        model: Any,
        probe: Any,
        *,
        every: int | None = None,
        budget: float = DEFAULT_BUDGET,
        stop_on: str | None = None,
        writer: Any = None,
        log_dir: str | None = None,
        **diagnose_options: Any,
    ):
        if writer is None and log_dir is not None:
            writer = _summary_writer(log_dir)
        self.writer = writer
        self.watch = Watch(model, probe, every, budget, stop_on, self._log, diagnose_options)

    def _log(self, step: int, metrics: dict[str, float]) -> None:
        if self.writer is not None:
            for name, value in metrics.items():
                self.writer.add_scalar(f"lstm_doctor/{name}", value, step)

    def step(self, step: int) -> bool:
        """Call once per training step; diagnoses when due. True when training should stop."""
        if self.watch.due(step):
            self.watch.check(step)
        return self.watch.should_stop

    __call__ = step

    @property
    def history(self) -> list[Check]:
        return self.watch.history

    @property
    def last(self):
        return self.watch.last

    @property
    def should_stop(self) -> bool:
        return self.watch.should_stop


def _summary_writer(log_dir: str):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("log_dir given but tensorboard is not installed: metrics are kept in history only")
        return None
    return SummaryWriter(log_dir)


def _keras_callback_class():
    import keras

    class KerasCallback(keras.callbacks.Callback):
        """Diagnose a Keras model's probe batch during ``fit``.

        ``KerasCallback(probe, every_n_batches=None, every_n_epochs=None, stop_on=None)``: a check
        at the start of training (step 0), then every N batches and/or at the end of every N
        epochs; with neither, after any batch once the time budget allows. Metrics go into
        ``logs`` (``lstm_doctor/{module}/{metric}``, so ``History`` and TensorBoard callbacks
        after this one see the epoch's), and into ``history``. ``stop_on="error"`` sets
        ``model.stop_training``.
        """

        def __init__(
            self,
            probe: Any,
            *,
            every_n_batches: int | None = None,
            every_n_epochs: int | None = None,
            budget: float = DEFAULT_BUDGET,
            stop_on: str | None = None,
            **diagnose_options: Any,
        ):
            super().__init__()
            self.probe = probe
            self.every_n_batches = every_n_batches
            self.every_n_epochs = every_n_epochs
            self.budget = budget
            self.stop_on = stop_on
            self.diagnose_options = diagnose_options
            self.watch: Watch | None = None
            self.seen = 0
            self.pending: dict[str, float] = {}

        @property
        def history(self) -> list[Check]:
            return [] if self.watch is None else self.watch.history

        @property
        def last(self):
            return None if self.watch is None else self.watch.last

        def _check(self, step: int, logs) -> None:
            sync = getattr(self.model, "jax_state_sync", None)
            if sync is not None:  # the JAX trainer keeps the weights off the variables during an epoch
                sync()
            report = self.watch.check(step)
            metrics = {f"lstm_doctor/{k}": v for k, v in report.metrics().items()}
            self.pending = metrics
            if logs is not None:
                logs.update(metrics)
            if self.watch.should_stop:
                self.model.stop_training = True

        def on_train_begin(self, logs=None):
            every = self.every_n_batches
            self.watch = Watch(self.model, self.probe, every, self.budget, self.stop_on, None, self.diagnose_options)
            self.seen = 0
            self._check(0, logs)

        def on_train_batch_end(self, batch, logs=None):
            self.seen += 1
            if self.every_n_epochs is not None and self.every_n_batches is None:
                return
            if self.watch.due(self.seen):
                self._check(self.seen, logs)

        def on_epoch_end(self, epoch, logs=None):
            if self.every_n_epochs is not None and (epoch + 1) % self.every_n_epochs == 0:
                self._check(self.seen, logs)
            elif logs is not None and self.pending:
                logs.update(self.pending)  # the last check's numbers, so History has them every epoch

    return KerasCallback


def __getattr__(name: str):
    if name == "KerasCallback":
        cls = _keras_callback_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module 'lstm_doctor.callbacks' has no attribute {name!r}")
