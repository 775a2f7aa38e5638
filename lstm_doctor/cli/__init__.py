"""The command line: parsing only.

- ``options``: the click options every command shares (one definition each);
- ``commands``: one click command per job; each fills the job's typed options
  and calls its ``execute(options) -> int`` (``lstm_doctor.jobs``);
- ``main``: the ``lstm-doctor`` group and the console entry point.

The jobs (and everything heavy: numpy's users, pytensor, matplotlib) are
imported inside the command functions, so ``--help`` answers instantly.
"""
