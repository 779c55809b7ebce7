"""Print the Markdown input reference: every input key, then every verb and flag.

Usage: ``python -m dpa1.io.config_doc > docs/input_reference.md``
"""

from __future__ import annotations

import sys

from dpa1.io.config import model_defaults_doc


def reference_doc() -> str:
    """The input keys (from the validator's schema) and the command line (from argparse)."""
    from dpa1.cli.reference import cli_reference_doc

    return model_defaults_doc() + cli_reference_doc()


def main() -> None:
    """Print the reference to stdout."""
    sys.stdout.write(reference_doc())


if __name__ == "__main__":
    main()
