"""The commands besides Lightning's fit/validate/test/predict: thin entry points over the library.

Each is a function whose typed signature is its command line (``cli.py`` registers it as a jsonargparse
subcommand); it prints what a user needs and raises ``ValueError``/``FileNotFoundError`` for a user's mistake,
which the CLI turns into one line and exit status 2.
"""

__all__ = ["NoResult"]


class NoResult(RuntimeError):
    """The command ran correctly but produced nothing usable (no face, no scorable input): exit status 1."""
