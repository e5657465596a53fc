"""The generator's constants; its settings and click model parameters are the ``generator:`` block of the
pipeline config (:class:`sim.config.GeneratorConfig`).
"""
from __future__ import annotations

from sim.config import GeneratorConfig, TruthConfig
from sim.config.pipeline import _RECENT_BURST_LEAD_DAYS, DAY  # noqa: F401 (the generator uses both)

__all__ = ["GeneratorConfig", "TruthConfig", "DAY", "ITEM_TOPICS_TABLE", "LONG_WINDOW_DAYS"]


ITEM_TOPICS_TABLE = "item_topics"  # hidden ground truth: item -> topic, read by diagnostics only
LONG_WINDOW_DAYS = 180  # the paper's long-term window; LT uses behaviors inside it
_ZIPF_CATEGORY = 2.0
_ZIPF_ITEM = 3.0
_INTEREST_SKEW = 1.5
_SESSION_SECONDS = 2 * 3600
_STYLE_MATCH_SHARE = 0.5  # a long-term candidate has its interest's style this often (styles on)
_TYPE_CUTS = ((0.85, "pv"), (0.91, "cart"), (0.96, "fav"))
