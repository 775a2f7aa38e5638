"""The click options every command shares, defined once.

Each decorator adds one group of options with the same names, choices,
defaults and help text wherever it is used, so ``diagnose``, ``what-if``,
``check``, ``compare``, ``trace``, ``featurize`` and ``inspect`` accept the
same model selection, inputs and engine. Vocabularies come from
``lstm_doctor.choices`` (imports nothing, so ``--help`` stays instant).
"""

from __future__ import annotations

import click

from lstm_doctor.choices import (
    COLORS,
    DEFAULT_ENGINE,
    ENGINES,
    KERAS_ACTIVATIONS,
    LAYOUTS,
    MODEL_FORMATS,
    PRESETS,
    REPORT_FORMATS,
    SEVERITIES,
    TEXT_CLEANERS,
)


def split_codes(values) -> tuple[str, ...]:
    """``--select W1 --select S301,S302`` → ``("W1", "S301", "S302")``."""
    return tuple(p.strip() for v in values for p in v.split(",") if p.strip())


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def model_options(f):
    """Which model, and how to read it."""
    return _apply(f, [
        click.option("--model-format", type=click.Choice(MODEL_FORMATS), help="Override format detection."),
        click.option("--preset", type=click.Choice(PRESETS), help="Declare a known codebase's actual equations."),
        click.option("--layer-prefix", help="torch/lasagne: the submodule whose LSTM to load (e.g. encoder.lstm)."),
        click.option("--layer-name", help="keras/onnx: the LSTM layer or node to load when there are several."),
        click.option("--trust-pickle", is_flag=True, help="Allow arbitrary pickles (runs code from the file!)."),
        *ARCHITECTURE_OPTIONS,
    ])


def architecture_options(f):
    """``--gate-activation``, ``--activation`` and ``--go-backwards`` alone (``compare``; the
    other commands have them in ``model_options``)."""
    return _apply(f, ARCHITECTURE_OPTIONS)


# Keras settings a weights-only file leaves open, stated instead of an architecture JSON.
# A value the file states is checked: a flag that contradicts it is refused. Other formats
# state these themselves and refuse the flags.
ARCHITECTURE_OPTIONS = [
    click.option("--gate-activation", type=click.Choice(KERAS_ACTIVATIONS),
                 help="Keras: the LSTM's recurrent_activation (hard_sigmoid is Keras 2's clip(0.2x+0.5, 0, 1), "
                 "Keras 3's relu6(x+3)/6, by the file's version). Default: the file's, else its Keras "
                 "version's default."),
    click.option("--activation", type=click.Choice(KERAS_ACTIVATIONS),
                 help="Keras: the LSTM's activation (candidate and cell output). Default: the file's, else tanh."),
    click.option("--go-backwards/--no-go-backwards", default=None,
                 help="Keras: whether the LSTM runs from the last step. Default: the file's, else no."),
]


def layout_option(f, name: str = "--layout", help_suffix: str = ""):
    return click.option(
        name,
        type=click.Choice(LAYOUTS),
        help="Axes of the inputs: btd (batch, time, features), tbd, or bct (channels-first conv output). "
        "Default: the model's declared layout." + help_suffix,
    )(f)


def mask_options(f):
    """``--padding`` and ``--mask``: where the padding is, or Keras' mask (after ``--lengths``)."""
    f = click.option("--mask", is_flag=True,
                     help="Keras masking: steps whose features are all the mask value (0, or the model's "
                     "Masking value) are skipped, as Keras skips them; gives the lengths.")(f)
    return click.option("--padding", type=click.Choice(["pre", "post"]),
                        help="Where --lengths' padding is: post (default, at the end) or pre (at the front, as "
                        "Keras' pad_sequences pads).")(f)


def input_options(required: bool = False, texts: bool = True):
    """``--inputs``, ``--layout``, ``--lengths``, ``--padding`` and ``--mask`` (``texts``: the
    command also reads texts through a front end)."""
    def decorate(f):
        # No dir_okay=False on file paths: the loaders refuse a directory in one line (exit 2).
        f = mask_options(f)
        f = click.option("--lengths", type=click.Path(), help="Valid length of each sequence (.npy).")(f)
        f = layout_option(f)
        return click.option(
            "--inputs", "-i", type=click.Path(), required=required,
            help="Input sequences (.npy or .npz)"
            + (", or texts (.txt, .jsonl, .json) for a front end." if texts else "."),
        )(f)

    return decorate


def format_option(*formats: str, help: str | None = None):
    """``--format``, one of ``formats``; the first (text) is the default."""
    return click.option("--format", "fmt", type=click.Choice(formats), default=formats[0], show_default=True,
                        help=help)


def output_option(what: str = "the report"):
    """``--output``/``-o``: a file written atomically, never one the run reads (``lstm_doctor.output``)."""
    return click.option("--output", "-o", type=click.Path(dir_okay=False), help=f"Write {what} here (atomically).")


def text_options(f):
    return _apply(f, [
        click.option("--text-field", default="text", show_default=True,
                     help="Text inputs (.json/.jsonl): the field of an object that holds the text."),
        click.option("--text-clean", type=click.Choice(TEXT_CLEANERS),
                     help="Text inputs: cleaning before the front end (default: tweet2vec built-in, none for a plug-in)."),
        click.option("--featurizer", help="Text inputs: a plug-in front end, module:function or an entry point name."),
    ])


ENGINE_HELP = ("Capture engine: fused (NumPy GEMMs with one compiled pass for the step and its statistics, "
               "float32), numpy (the NumPy loop), pytensor (the scan, engine of record); auto picks the fastest "
               "engine available for the run.")


def engine_option(f):
    return click.option("--engine", type=click.Choice(ENGINES), default=DEFAULT_ENGINE, show_default=True,
                        help=ENGINE_HELP)(f)


def engine_override_option(f):
    """``check``'s --engine: the same choices, no default, so the config's ``engine`` holds unless given."""
    return click.option("--engine", type=click.Choice(ENGINES), default=None,
                        help=f"Override the config's engine (default: {DEFAULT_ENGINE}). {ENGINE_HELP}")(f)


def selection_options(f):
    """Which findings count: ``--select``/``--ignore`` (longest prefix wins), thresholds, fail-on, exit-zero."""
    return _apply(f, [
        click.option("--fail-on", type=click.Choice(SEVERITIES), default="error", show_default=True,
                     help="Exit 1 when a finding is at or above this severity."),
        click.option("--exit-zero", is_flag=True, help="Always exit 0 when the run completed."),
        click.option("--select", multiple=True, help="Only these code prefixes (repeat or comma-separate)."),
        click.option("--ignore", multiple=True, help="Drop these code prefixes (longest prefix wins)."),
        click.option("--threshold", multiple=True, help="Override a rule threshold: CODE.param=value."),
    ])


def color_option(f):
    return click.option("--color", type=click.Choice(COLORS), default="auto", show_default=True,
                        help="Colour in the text report (NO_COLOR is honoured).")(f)


def report_options(f):
    """``--format``, ``--output`` and ``--plots`` of a diagnosis report."""
    return _apply(f, [
        format_option(*REPORT_FORMATS),
        click.option("--output", "-o", type=click.Path(), help="Write the report here (atomically)."),
        click.option("--plots", "plots_dir", type=click.Path(file_okay=False),
                     help="markdown: write the plots (PNG) here and link them."),
    ])


def max_memory_option(f):
    return click.option(
        "--max-memory",
        metavar="SIZE",
        help="Refuse, before allocating, a run estimated to need more memory than SIZE (e.g. 2GB, 512MB). "
        "Default: half the physical memory.",
    )(f)
