"""Print the Markdown input reference.

Usage: ``python -m dpa1.io.config_doc > docs/input_reference.md``
"""

from __future__ import annotations

import sys

from dpa1.io.config import model_defaults_doc


def main() -> None:
    """Print the reference generated from the validator's schema to stdout."""
    sys.stdout.write(model_defaults_doc())


if __name__ == "__main__":
    main()
