"""Synthetic lifelong behavior logs with the structure SIM is about (Pi et al. 2020, sections 1, 3, 5.4).

SIM only helps when a user's interest in the candidate's category shows in behaviors that are *old*:
long-term interests revisited at intervals longer than the 14-day short-term window, item-level repeats
inside those categories, and a click model where that long-term interest matters as much as the recent
one. This module generates such logs in Spark, without driver-side loops, so the same code produces a
one-minute demo or tens of millions of behaviors.

Randomness: every draw is ``xxhash64(seed, tag, ids...)`` mapped to a uniform number in [0, 1) (53 bits),
so rows do not depend on partitioning or execution order and a run with the same config is identical.

Model (config keys of the ``generator:`` block of conf/pipeline.yaml in parentheses)
--------------------------------------------------------------------------------------
Catalog. ``categories`` categories; category c owns items c, c + C, c + 2C, ... (``items`` / C items
each, so category(item) = (item - 1) mod C + 1 and ids start at 1; 0 stays padding). Categories are
grouped into ``topics`` latent topics: topic(c) = (c - 1) mod T + 1, so a topic holds every T-th category
(about C / T of them, popular and rare ones mixed). Topics are hidden: no table a model trains on carries
them; ``item_topics`` (item_id, category_id, topic_id) is written for diagnostics only. Category
popularity is a power law: a popular category is 1 + floor(C * v^2) for uniform v; an item's popularity
rank inside its category is floor(M * v^3).

History length. n_u behaviors per user over ``history_days`` days ending on ``end_date``: Pareto with
tail index ``tail_index`` whose scale is solved so that the mean of min(n, ``max_behaviors_per_user``)
is ``mean_behaviors_per_user``; clipped to [``min_behaviors_per_user``, ``max_behaviors_per_user``]. The
first ``heavy_users`` users get exactly ``max_behaviors_per_user`` (54,000 reproduces the paper's
longest sequences; the demo default keeps them at the long sequence cap).

Each behavior comes from one of three sources:
1. Long-term interest (share ``share_long_term``). A user has L_u = clip(``interests_min`` +
   floor(log2(1 + n_u / 100)), ``interests_min``, ``interests_max``) interests k = 0..L_u-1, each held
   at topic level: a popular topic tau_k (1 + floor(T * v^2)) and a home category h_k inside it (the
   topic's popular categories first), with weight w_k = (k+1)^(2/3) - k^(2/3) (w_0 = 1; a behavior
   picks interest floor(L_u * v^1.5), so w_k is proportional to how often interest k is visited).
   Interest k is *revisited* every P_k days, P_k uniform in [``revisit_min_days``,
   ``revisit_max_days``] (> 14), from a random phase: a visit is a 2-hour session on day
   phase_k + s * P_k. A visit goes to one category: with probability x = ``cross_category_share``
   any category of the topic (uniformly), else the home category. So with x > 0 the same lasting
   interest shows in several categories, and the visit before the last one may be in another category
   than the candidate's. Inside the category a behavior repeats one of the user's
   ``favorites_per_category`` favorite items with probability ``repeat_prob`` (item-level repeat
   preference), else picks a popular item.
2. Short-term burst (share ``share_burst``). B_u = max(1, round(n_u * share_burst / ``burst_size``))
   bursts, each a popular category visited intensively for 1-3 days. Burst 0 is recent: it starts in the
   10 days before the impression window or inside it; the others are spread over the history.
3. Noise (the rest): a popular category and item at a uniform time.
behavior_type: pv 85%, cart 6%, fav 5%, buy 4%.

Impressions. On each of the last ``impression_days`` days every user sees ``impressions_per_user_day``
candidates at uniform times t of the day. The candidate's category is one of the user's long-term
interests (35%: the home category, or with probability x any category of the interest's topic; then a
favorite item with probability 0.3), the recent burst's category (25%), another burst's category (10%)
or a popular category (30%).

Item styles (``styles_per_category`` S; 0 = off, the rows above exactly). Within a category the click
model above uses only aggregates (recencies, short-term counts) and the exact favorite item, so SIM's ESU
(attention over each behavior of the candidate's category) has nothing to select that average pooling
does not give. With S > 0 relevance also lives *within* a category:
- an item's style is its popularity rank inside its category mod S: s(item) = floor((item - 1) / C) mod S
  (hidden, like topics; ``item_topics`` gets a ``style`` column);
- lasting interest k holds a style sigma_k (uniform in 0..S-1, hash-drawn), the same in every category of
  its topic. A behavior of interest k is of style sigma_k with probability f = ``style_focus``: a
  favorite of that style (with the repeat probability; the popular item below when no favorite has the
  style), else the popular item of the draw moved to that style inside its block of S ranks (about the
  same popularity); otherwise (1 - f) an item of any style as above. Bursts and noise: any style;
- a long-term candidate (the 35% above) is of its interest's style with probability 1/2, else of one of
  the S - 1 other styles (a favorite of that style or a popular item of it, as for behaviors), so
  candidates of the same category differ in style; the other candidates keep any style;
- the click model's long-term term reads only behaviors of the candidate's style s = s(a) (below).
Generate such logs with ``python jobs/generate_logs.py --lakehouse DIR --set generator.styles_per_category=4``
(``--set generator.style_focus=0.8`` is the default focus).

Hidden click model (``truth:``), using only the user's behaviors with ts < t (point-in-time):
    LT = max_k w_k * [(1 - x) * 1{c = h_k} * exp(-delta_c / tau) + x * 1{topic(c) = tau_k} * exp(-delta_T / tau)]
         long-term interest in the candidate: delta_c = days since the user's last behavior in the
         candidate's category c, delta_T = days since the last behavior in any category of c's topic,
         both within the 180-day long window (a term is 0 without such a behavior); tau =
         ``long_term_decay_days``. The first term is what hard search (same category) can see; the
         second needs behaviors of other categories of the topic, which only soft search retrieves.
    ST = 1 - exp(-n14_c / ``short_term_saturation``)          short-term interest
         n14_c = the user's behaviors in c during the ``short_term_days`` days before t
    FAV = 1 if the candidate is one of the user's favorite items of a category with long-term affinity
         a(u, c) = max_k w_k * [(1 - x) * 1{c = h_k} + x * 1{topic(c) = tau_k}] > 0
    p_click = sigmoid(``bias`` + ``long_term`` * LT + ``short_term`` * ST + ``favorite_item`` * FAV)
    label ~ Bernoulli(p_click)
    p_click_short = sigmoid(``bias`` + ``short_term`` * ST): the same model without its long-term terms
         (LT and FAV), the best ranking a model that sees only the last 14 days can be held to.
With styles (S > 0) LT becomes
    LT_S = max_k w_k * 1{s(a) = sigma_k} * [(1 - x) * 1{c = h_k} * exp(-delta_{c,s} / tau)
                                            + x * 1{topic(c) = tau_k} * exp(-delta_{T,s} / tau)]
         delta_{c,s} = days since the user's last behavior in category c *with an item of style s(a)*,
         delta_{T,s} = the same over the categories of c's topic: a candidate of a style no interest holds
         has no long-term term, and its recency is that of the matching behaviors only (which the ESU
         can single out among the category's behaviors, average pooling cannot). ST, FAV (with a(u, c)
         as above, style-free) and ``p_click_short`` are unchanged.
``long_term`` = ``short_term`` by default: the long-term interest matters as much as the short-term one.
With x = 0 every visit and every long-term candidate stays in the home category and LT is the
category-only model (delta_T plays no part): soft search can at best equal hard search. With x = 1 the
interest is a topic: the candidate's own category holds only part of it.
Because long-term interests are revisited every 21-60 days, many candidates of a long-term interest have
no same-category behavior in the last 14 days (d_category > 14): a short-window model (DIN) cannot see
them, a model that searches the lifelong history can. ``p_click`` and ``p_click_short`` are stored with
each impression, so every model's AUC is read against both oracles (``generate_logs`` prints them per
impression date).

Generated rows go through :mod:`sim.inputs.validation` like any input (a rare exact duplicate event, two
behaviors of a user at the same second on the same item, goes to ``rejects``).
"""
