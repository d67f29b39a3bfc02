"""DE3-BERT: distance-enhanced early exiting for BERT, as an analysis library (no UI)."""

__version__ = "0.1.0"
