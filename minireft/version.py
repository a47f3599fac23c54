"""The package's and the spec's versions, in one place that minireft/__init__.py, io.py (which
writes them into every adapter's reft_config.json) and pyproject.toml all read.

SPEC_VERSION is reference/SPEC.md's: a change of the math or of the corpus format bumps it."""

__version__ = "0.1.0"
SPEC_VERSION = "1.1"
