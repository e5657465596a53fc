"""Formats below every stage: what the stages and the adapters share about how rows are stored.

``packing``: the packed-row format of the samples' sequence columns (int32 values, one binary value per
row), read by the adapters (the loader, serving), bounded at import (``ID_MAX``) and written by the
samples stage. Nothing here imports a stage.
"""
