"""Point-in-time training samples: what SIM's two search units and the short-term branch see for one
impression (SIM sections 4 and 5.2).

For an impression of day D at time t the history is UBT(D-1) (read by Delta time travel) plus the
user's day-D behaviors with ts < t, the offline twin of the paper's real-time behavior events. From it:

- short sequence (DIN branch): behaviors in (t - short_days, t), newest first, cap ``caps.short_cap``;
- hard sequence (hard-search GSU, r_i = 1 iff category(b_i) == category(a)): the candidate category's
  behaviors in (t - long_days, t), newest first, truncated to K = ``caps.hard_k`` as the paper does;
- long sequence (soft-search GSU input and average pooling): the newest ``caps.long_cap`` behaviors of
  (t - long_days, t) across categories;
- for each: item ids, category ids and time-gap buckets of t minus the behavior time (the e^t_j of
  the ESU), stored packed, only the real elements, as int32 (:mod:`sim.formats.packing`; training pads
  them per batch); plus the real lengths, ``long_len`` (uncapped count in the
  long window) and ``d_category`` (days since the user's last behavior in the candidate's category,
  -1 if none; the paper's Table 6 analysis).

Count mode (``windows.mode: count``, the paper's public-data setting): long = the last
``long_count`` behaviors before t, short = the last ``short_count``, hard = the candidate category's
behaviors within the long sequence; ``long_len`` is then the number of behaviors before t.

Cost. Work per impression is bounded by the caps, not by the user's history: the hard sequence reads
only the candidate category's UBT rows (one per segment), each sliced to K before they are combined;
the long and short sequences read a per-user list of the newest behaviors (aligned primitive arrays),
computed once per user from per-category slices of at most ``long_cap`` each, so per-user work is
bounded by categories x cap.
Arrays are kept newest first, so a window is a prefix: per impression only the day-D behaviors and
the few UBT behaviors of the window's first day (the only ones whose membership depends on t) are
looked at one by one; the rest is slicing. ``long_len`` is the user's UBT count minus the behaviors of
the window's first day older than t - long_days (read from that one behaviors partition) plus the
day-D behaviors before t.

Leak guard: every sequence element must be older than its impression. The check runs inside the
write over the raw behavior times (before they become gap buckets); a violation fails the job with
:class:`LeakError` naming the first offending impression, and nothing is committed.
"""
