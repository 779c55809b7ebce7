"""Input/output: the input-file validator (``config``) and file formats."""
