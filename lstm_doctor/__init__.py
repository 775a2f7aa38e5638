"""lstm_doctor: a command-line doctor for LSTM layers.

Pipeline (one module or folder per stage):
load → model → scan (capture) → stats (streaming) → analyzers (findings) → report.
"""

__version__ = "0.1.0"
