"""Extra CLI commands, one module each, registered automatically by ``lstm_doctor.cli``.

A module here defines ``commands``: a list of click commands. It must import
nothing heavy at module level (numpy users, pytensor, matplotlib), so that
``lstm-doctor --help`` stays instant: import inside the command function.
"""
