"""Tests of the SIM models and their parts (sim.models): shapes, padding, search, loss, learning."""
from __future__ import annotations

import os

# Busy-waiting OpenMP workers make 2-thread torch many times slower on a shared, loaded CPU; libgomp
# reads this when torch loads, so it only helps if nothing imported torch before this module.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from sim.models import MODEL_NAMES, CTRModel, build_model, hash_ids, model_defaults  # noqa: E402
from sim.models.layers import Behaviors, FeatureEmbedding, TargetAttention, masked_softmax  # noqa: E402
from sim.models.parts import DINShort, LongTermArch, read_sequence  # noqa: E402
from sim.models.registry import validate  # noqa: E402
from sim.models.search import GeneralSearchUnit  # noqa: E402

torch.set_num_threads(2)

SMALL = {"item_buckets": 5_003, "category_buckets": 101, "time_gap_buckets": 16, "emb_dim": 4,
         "mlp_dims": [32, 16], "attention_dims": [16], "esu_proj_dim": 8, "gsu_proj_dim": 8,
         "soft_k": 6}
SOFT_MODELS = [n for n in MODEL_NAMES if "soft" in n]
SEQS = ("short", "hard", "long")


def make_batch(b: int = 16, s: int = 5, k: int = 8, long: int = 24, n_cats: int = 12,
               seed: int = 0, gap_buckets: int = 16) -> dict[str, Tensor]:
    """Random rows laid out like the samples table: newest first, 0-padded, hard_* = the candidate
    category's behaviors of the long window, short_* = the newest behaviors.

    Item ids are large (~1e9) so hashing is exercised; an item's category is a function of its id.
    """
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(0, long + 1, (b,), generator=g)
    lens[0], lens[1] = long, 0  # a full row and a user with no history
    cats = torch.randint(1, n_cats + 1, (b, long), generator=g)
    items = 1_000_000_000 + cats * 10_000 + torch.randint(1, 50, (b, long), generator=g)
    gaps = torch.randint(1, gap_buckets, (b, long), generator=g)
    real = torch.arange(long).unsqueeze(0) < lens.unsqueeze(1)
    items, cats, gaps = items * real, cats * real, gaps * real
    cand_cat = torch.randint(1, n_cats + 1, (b,), generator=g)
    cand_item = 1_000_000_000 + cand_cat * 10_000 + torch.randint(50, 5_000, (b,), generator=g)
    batch = {"item_id": cand_item, "category_id": cand_cat,
             "long_items": items, "long_cats": cats, "long_gaps": gaps,
             "short_items": items[:, :s].clone(), "short_cats": cats[:, :s].clone(),
             "short_gaps": gaps[:, :s].clone(), "long_len": lens}
    hard = torch.zeros(3, b, k, dtype=torch.long)
    for r in range(b):
        pos = (cats[r] == cand_cat[r]).nonzero().flatten()[:k]
        hard[0, r, :len(pos)], hard[1, r, :len(pos)] = items[r, pos], cats[r, pos]
        hard[2, r, :len(pos)] = gaps[r, pos]
    batch["hard_items"], batch["hard_cats"], batch["hard_gaps"] = hard
    batch["label"] = (hard[0] > 0).any(dim=1).long()
    batch["d_category"] = torch.full((b,), -1)
    return batch


def pad_more(batch: dict[str, Tensor], extra: int = 7) -> dict[str, Tensor]:
    """Append ``extra`` zero positions to every sequence."""
    out = dict(batch)
    for seq in SEQS:
        for f in ("items", "cats", "gaps"):
            t = batch[f"{seq}_{f}"]
            out[f"{seq}_{f}"] = torch.cat([t, torch.zeros(t.shape[0], extra, dtype=t.dtype)], dim=1)
    return out


def test_hash_ids_keeps_row_zero_for_padding() -> None:
    x = torch.tensor([0, 1, 4, 5, 10**9, 10**9 + 3])
    rows = hash_ids(x, 5)
    assert rows[0] == 0
    assert bool((rows[1:] >= 1).all()) and bool((rows < 5).all())
    assert torch.equal(rows, torch.where(x > 0, x % 4 + 1, 0))


def test_masked_softmax_all_padding_row_is_zero_not_nan() -> None:
    w = masked_softmax(torch.randn(2, 4), torch.tensor([[True, False, True, False], [False] * 4]))
    assert torch.equal(w[1], torch.zeros(4))
    assert w[0, 1] == 0 and w[0, 3] == 0
    assert torch.allclose(w[0].sum(), torch.tensor(1.0))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_shapes(name: str) -> None:
    b, s, k, long = 16, 5, 8, 24
    batch = make_batch(b, s, k, long)
    model = build_model(name, SMALL)
    out = model(batch)
    assert out["logit"].shape == (b,)
    assert out["short_attention"].shape == (b, s)
    assert torch.isfinite(out["logit"]).all()
    if name in SOFT_MODELS:
        assert out["gsu_logit"].shape == (b,)
        assert out["gsu_scores"].shape == (b, long)
        assert out["gsu_index"].shape == (b, SMALL["soft_k"])
    else:
        assert "gsu_logit" not in out
    if name.startswith("sim_"):
        kept = SMALL["soft_k"] if "soft" in name else k
        assert out["esu_attention"].shape == (b, model_defaults()["esu_heads"], kept)
    assert model.loss(out, batch["label"]).shape == ()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_extra_padding_changes_nothing(name: str) -> None:
    batch = make_batch(seed=1)
    torch.manual_seed(0)
    model = build_model(name, SMALL).eval()
    with torch.no_grad():
        a, b = model(batch), model(pad_more(batch))
    for key in ("logit", "gsu_logit"):
        if key in a:
            assert torch.allclose(a[key], b[key], atol=1e-6, rtol=0), key


@pytest.mark.parametrize("name", ["din", "sim_hard", "sim_soft", "sim_hard_time", "sim_soft_time"])
def test_padded_positions_get_exactly_zero_attention(name: str) -> None:
    batch = make_batch(seed=2)
    model = build_model(name, SMALL)
    weights = model.attention_weights(batch)
    short_pad = batch["short_items"] == 0
    assert short_pad.any()
    assert bool((weights["short_attention"][short_pad] == 0).all())
    if name != "din":
        out = model(batch)
        source = batch["long_items"] if "soft" in name else batch["hard_items"]
        kept = source.gather(1, out["gsu_index"])
        pad = (kept == 0).unsqueeze(1).expand_as(out["esu_attention"])
        assert pad.any()
        assert bool((out["esu_attention"][pad] == 0).all())
        real_rows = (kept > 0).any(dim=1)
        sums = out["esu_attention"].sum(dim=-1)[real_rows]
        assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


@pytest.mark.parametrize("name", ["sim_soft", "gsu_only_soft"])
def test_soft_search_keeps_the_k_highest_scores(name: str) -> None:
    batch = make_batch(b=32, seed=3)
    model = build_model(name, SMALL)
    out = model(batch)
    k = SMALL["soft_k"]
    emb = model.embedding.behaviors(Behaviors(batch["long_items"], batch["long_cats"],
                                              batch["long_gaps"]))
    target = model.embedding.items_and_cats(batch["item_id"], batch["category_id"])
    assert model.gsu is not None
    for r in range(batch["item_id"].shape[0]):
        real = (batch["long_items"][r] > 0).nonzero().flatten().tolist()
        # Brute force: score every real behavior on its own, rank in Python.
        with torch.no_grad():
            scores = {i: float(model.gsu.w_b(emb[r, i]) @ model.gsu.w_a(target[r])) for i in real}
        expected = sorted(real, key=lambda i: -scores[i])[:k]
        picked = out["gsu_index"][r].tolist()
        picked_real = [i for i in picked if batch["long_items"][r, i] > 0]
        assert set(picked_real) == set(expected), r
        assert len(picked_real) == min(k, len(real))


def test_hard_search_unit_applies_the_category_rule_newest_first() -> None:
    batch = make_batch(seed=4)
    emb = FeatureEmbedding(101, 101, 16, 4)
    gsu = GeneralSearchUnit("hard", k=8)
    long = Behaviors(batch["long_items"], batch["long_cats"], batch["long_gaps"])
    target = emb.items_and_cats(batch["item_id"], batch["category_id"])
    found = gsu(emb, long, batch["category_id"], target)
    # The Spark pipeline's hard_* columns are exactly this search (make_batch builds them so).
    assert torch.equal(found.behaviors.items * found.mask, batch["hard_items"])
    assert torch.equal(found.behaviors.gaps * found.mask, batch["hard_gaps"])
    assert list(gsu.parameters()) == []


def test_hard_mode_has_no_gsu_term_in_the_loss() -> None:
    batch = make_batch(seed=5)
    for name in ("sim_hard", "sim_hard_time", "gsu_only_hard"):
        model = build_model(name, SMALL)
        assert not [n for n, _ in model.named_parameters() if n.startswith("gsu.")]
        out = model(batch)
        assert "gsu_logit" not in out
        assert model.long_term.loss_terms(out, batch["label"].float()) == []
        loss = model.loss(out, batch["label"])
        assert torch.equal(loss, F.binary_cross_entropy_with_logits(out["logit"],
                                                                    batch["label"].float()))
    with pytest.raises(ValueError, match="gsu_alpha"):
        build_model("sim_hard", {"gsu_alpha": 1.0})


def test_soft_mode_loss_and_gradients_reach_the_gsu() -> None:
    batch = make_batch(seed=6)
    model = build_model("sim_soft", SMALL)
    out = model(batch)
    y = batch["label"].float()
    loss = model.loss(out, batch["label"])
    expected = (F.binary_cross_entropy_with_logits(out["gsu_logit"], y)
                + F.binary_cross_entropy_with_logits(out["logit"], y))
    assert torch.allclose(loss, expected)
    loss.backward()
    assert model.gsu is not None
    for p in (model.gsu.w_b.weight, model.gsu.w_a.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    weighted = build_model("sim_soft", {**SMALL, "gsu_alpha": 0.5, "esu_beta": 2.0})
    out = weighted(batch)
    expected = (0.5 * F.binary_cross_entropy_with_logits(out["gsu_logit"], y)
                + 2.0 * F.binary_cross_entropy_with_logits(out["logit"], y))
    assert torch.allclose(weighted.loss(out, batch["label"]), expected)


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ValueError) as err:
        build_model("dien_plus_plus", {})
    for name in MODEL_NAMES:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model("din", {"embedding_dim": 4})


def _train(name: str, batch: dict[str, Tensor], steps: int) -> tuple[torch.nn.Module, float, float]:
    torch.manual_seed(0)
    model = build_model(name, SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    y = batch["label"].float()
    first = 0.0
    for step in range(steps):
        opt.zero_grad()
        out = model(batch)
        if step == 0:
            first = F.binary_cross_entropy_with_logits(out["logit"], y).item()
        model.loss(out, batch["label"]).backward()
        opt.step()
    with torch.no_grad():
        final = F.binary_cross_entropy_with_logits(model(batch)["logit"], y).item()
    return model, first, final


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_scores_int32_sequences_as_int64(name: str) -> None:
    """The loader gives sequence ids as int32 (the samples' stored width): every model scores them, and
    trains on them, exactly as on int64 ids."""
    from sim.formats.packing import PACKED_COLUMNS
    torch.manual_seed(0)
    model = build_model(name, SMALL).eval()
    batch = make_batch(seed=3)
    narrow = {c: v.to(torch.int32) if c in PACKED_COLUMNS else v for c, v in batch.items()}
    assert narrow["long_items"].dtype == torch.int32 and int(narrow["long_items"].max()) > 10**9
    torch.manual_seed(1)  # DIEN and MIMN draw in forward
    want = model(batch)["logit"]
    torch.manual_seed(1)
    got = model(narrow)["logit"]
    assert torch.equal(got, want)
    model.train()
    model.loss(model(narrow), narrow["label"]).backward()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_model_learns_a_tiny_task(name: str) -> None:
    # Label = the candidate's category occurs in the long history. The long branches see it; the
    # short-only DIN sees part of it (short = newest behaviors) and can memorise the 200 candidates.
    batch = make_batch(b=200, s=5, k=8, long=24, n_cats=12, seed=7)
    _, first, final = _train(name, batch, steps=60)
    assert final < 0.4 * first or final < 0.3, (name, first, final)


@pytest.mark.parametrize("name", ["gsu_only_hard", "sim_hard"])
def test_hard_search_generalises_to_unseen_rows(name: str) -> None:
    # Memorising candidates cannot help on fresh rows; only reading the hard-search output can. No short
    # sequence: DIN's unnormalised short branch alone can memorise 200 rows, and this is about the long one.
    model, _, _ = _train(name, make_batch(b=200, s=0, k=8, long=24, n_cats=12, seed=7), steps=60)
    fresh = make_batch(b=200, s=0, k=8, long=24, n_cats=12, seed=8)
    with torch.no_grad():
        predicted = model(fresh)["logit"] > 0
    accuracy = (predicted == fresh["label"].bool()).float().mean().item()
    assert accuracy > 0.9, accuracy


def test_din_attention_is_unnormalised_by_default() -> None:
    """DIN keeps the intensity of an interest: two copies of a behavior weigh twice one (softmax: same)."""
    assert model_defaults()["din_normalization"] == "none"
    assert build_model("din", SMALL).short_attention.normalization == "none"
    torch.manual_seed(0)
    target, key = torch.randn(1, 8), torch.randn(1, 1, 8)
    for norm, factor in (("none", 2.0), ("softmax", 1.0)):
        att = TargetAttention(8, (16,), normalization=norm)
        one, _ = att(target, key, torch.ones(1, 1, dtype=torch.bool))
        two, weights = att(target, key.repeat(1, 2, 1), torch.ones(1, 2, dtype=torch.bool))
        assert torch.allclose(two, factor * one, atol=1e-6), norm
        pad, _ = att(target, torch.cat([key, torch.randn(1, 3, 8)], 1), torch.tensor([[True, False, False, False]]))
        assert torch.allclose(pad, one, atol=1e-6), norm  # padding weighs exactly 0
    with pytest.raises(ValueError, match="normalization"):
        TargetAttention(8, (16,), normalization="sigmoid")


@pytest.mark.parametrize("pooling", ["sum", "softmax"])
def test_soft_gsu_aux_input(pooling: str) -> None:
    """Equation 2: U_r = sum_i r_i e_i over the real behaviors, r_i = (W_b e_i) . (W_a e_a); or the
    default, sum_i softmax(r)_i e_i."""
    assert model_defaults()["gsu_aux_pooling"] == "softmax"
    torch.manual_seed(0)
    gsu = GeneralSearchUnit("soft", k=3, behavior_dim=8, proj_dim=4, aux_hidden=(8,), aux_pooling=pooling)
    emb = FeatureEmbedding(101, 11, 4, 4)
    batch = make_batch(b=4, long=6, n_cats=5)
    seq = Behaviors(batch["long_items"], batch["long_cats"], batch["long_gaps"])
    target = emb.items_and_cats(batch["item_id"], batch["category_id"])
    captured = {}
    gsu.aux_mlp.register_forward_hook(lambda m, inp, out: captured.update(x=inp[0]))
    gsu(emb, seq, batch["category_id"], target)
    e = emb.behaviors(seq)
    r = torch.einsum("blp,bp->bl", gsu.w_b(e), gsu.w_a(target))
    w = r * seq.mask if pooling == "sum" else masked_softmax(r, seq.mask)
    want = torch.cat([torch.einsum("bl,ble->be", w, e), target], dim=-1)
    assert torch.allclose(captured["x"], want, atol=1e-6)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_input_columns_are_all_a_model_reads(name: str) -> None:
    """A reader may load only ``input_columns``: the model gives the same output from them alone, and
    time gaps are read only by the models that embed them."""
    torch.manual_seed(0)
    model = build_model(name, SMALL).eval()
    batch = make_batch()
    cols = model.input_columns
    with torch.no_grad():
        full, only = model(batch)["logit"], model({c: batch[c] for c in cols})["logit"]
    assert torch.equal(full, only)
    assert any(c.endswith("_gaps") for c in cols) == name.endswith("_time")


def test_identity_init_starts_soft_search_from_the_candidates_category() -> None:
    """With W_b = W_a = I, r_i = e_i . e_a at initialisation: behaviors sharing the candidate's category
    (hence its category embedding) rank first, as hard search would keep them; a random init does not."""
    from sim.training.diagnostics import metrics, tally_batch
    batch = make_batch(b=64, long=24, n_cats=12, seed=3)
    shares = {}
    for init in ("identity", "random"):
        torch.manual_seed(0)
        model = build_model("sim_soft", {**SMALL, "gsu_init": init, "soft_k": 2}).eval()
        with torch.no_grad():
            out = model(batch)
        shares[init] = metrics(tally_batch(batch, out, "soft"), "soft", False)
    assert model_defaults()["gsu_init"] == "identity"
    # Share of hard search's first 2 picks that soft search keeps (item embeddings add noise to r_i).
    assert shares["identity"]["hard_soft_overlap"] > 0.5 > 0.35 > shares["random"]["hard_soft_overlap"], shares
    assert shares["identity"]["topk_same_category"] > 2 * shares["random"]["topk_same_category"], shares


# ------------------------------------------------------------------------- composition and config

# Recorded from the string-dispatched CTRModel (commit 9596ef9) with fixed seeds: sha256 of the
# state-dict "key:shape" lines (first 16 hex digits), the loss and the sum of the logits.
BEFORE_PARTS = {
    "din": ("ec3083d3469ef97e", 0.6952992081642151, -4.762671947479248),
    "dien": ("36d50bf29a150a38", 2.0831990242004395, -2.940725803375244),
    "avgpool_long_din": ("3b60e2c1f1f11525", 0.7218641638755798, -0.4726398289203644),
    "mimn": ("20e26f88f49a0e7f", 0.7440876364707947, 3.152750253677368),
    "gsu_only_hard": ("3b60e2c1f1f11525", 0.7028053402900696, -0.48590248823165894),
    "gsu_only_soft": ("7ba6a5ddec1f0a63", 1.3897886276245117, -3.5081043243408203),
    "sim_hard": ("90088e6951f38764", 0.7050468921661377, 0.12415027618408203),
    "sim_soft": ("f368f7ac4e362ae6", 1.3913934230804443, -2.012594699859619),
    "sim_hard_time": ("aa8585ba44ad958c", 0.711808979511261, 1.532713770866394),
    "sim_soft_time": ("3c871b6e1407d388", 1.4043560028076172, 1.5243446826934814),
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_composed_models_keep_their_state_dict_keys_weights_and_outputs(name: str) -> None:
    """Checkpoints of the models before they were composed from parts load (same keys and shapes), and
    one seed gives the same initial weights, outputs and loss."""
    import hashlib
    torch.manual_seed(0)
    model = build_model(name, {**SMALL, "embedding_l2": 0.1})
    batch = make_batch(seed=3)
    out = model(batch)
    keys = "\n".join(f"{k}:{tuple(v.shape)}" for k, v in model.state_dict().items())
    digest, loss, logit_sum = BEFORE_PARTS[name]
    assert hashlib.sha256(keys.encode()).hexdigest()[:16] == digest
    assert model.loss(out, batch["label"]).item() == pytest.approx(loss, rel=1e-5)
    assert out["logit"].sum().item() == pytest.approx(logit_sum, rel=1e-5, abs=1e-5)


def test_each_model_is_its_registered_parts() -> None:
    from sim.models.registry import LONG_PARTS, MODELS, SHORT_PARTS
    assert set(MODELS) == set(MODEL_NAMES)
    dim = 2 * SMALL["emb_dim"]
    for name, (short, long) in MODELS.items():
        model = build_model(name, SMALL)
        config = validate(SMALL)
        assert type(model.short_term) is type(SHORT_PARTS[short](config, dim))
        assert type(model.long_term) is type(None if long is None else LONG_PARTS[long](config, dim))
        assert model.sequences == tuple(s for p in model.parts for s in p.sequences)


def test_a_model_takes_any_long_term_part_it_is_given() -> None:
    """No branch on a name: a part the registry does not know plugs in through the interface."""

    class NewestLong(LongTermArch):
        """The newest long-term behavior with its time gap, projected; an output and a loss term of its own."""
        sequences, with_time = ("long",), True

        def __init__(self, in_dim: int) -> None:
            super().__init__()
            self.newest = torch.nn.Linear(in_dim, 3)

        out_dim = 3

        def forward(self, embedding, batch, target):
            e = embedding.behaviors(read_sequence(batch, "long"), with_time=True)[:, :1]
            u = self.newest(e[:, 0])
            return u, {"newest_norm": u.pow(2).sum(-1)}, [e]

        def loss_terms(self, outputs, labels):
            return [0.5 * outputs["newest_norm"].mean()]

    emb = FeatureEmbedding(SMALL["item_buckets"], SMALL["category_buckets"], 16, SMALL["emb_dim"])
    e_dim = emb.behavior_dim
    model = CTRModel(emb, DINShort(e_dim, [8]), NewestLong(e_dim + SMALL["emb_dim"]), mlp_dims=[8])
    assert model.sequences == ("short", "long")
    assert model.input_columns == ("item_id", "category_id", "short_items", "short_cats",
                                   "long_items", "long_cats", "long_gaps")
    assert [k.split(".")[0] for k in model.state_dict()].count("newest") == 2  # weight, bias
    batch = make_batch(seed=9)
    out = model({c: batch[c] for c in model.input_columns})
    assert out["logit"].shape == out["newest_norm"].shape == (16,)
    y = batch["label"].float()
    loss = model.loss(out, batch["label"])
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(out["logit"], y)
                          + 0.5 * out["newest_norm"].mean())
    loss.backward()
    assert model.newest.weight.grad is not None and model.newest.weight.grad.abs().sum() > 0
    model.eval()
    assert not model.long_term.training and not model.short_term.training
    with pytest.raises(ValueError, match="two modules named 'short_attention'"):
        CTRModel(emb, DINShort(e_dim, [8]), DINShort(e_dim, [8]))


@pytest.mark.parametrize("name", ["din", "sim_soft_time", "mimn"])
def test_pyfunc_scores_rows_as_lists_like_the_dense_batch(name) -> None:
    """The logged model's pyfunc takes samples rows with sequences as lists of any length (here cut to
    their real length) and scores them as the model scores the padded batch training reads."""
    import numpy as np
    from sim.adapters.serving import dense_batch, rows_as_lists, score
    torch.manual_seed(0)
    model = build_model(name, SMALL).eval()
    batch = pad_more(make_batch())
    cols = list(model.input_columns)
    rows = rows_as_lists({c: batch[c].numpy() for c in cols}, len(batch["item_id"]))
    seq = next(c for c in cols if c.endswith("_items"))
    width = batch[seq].shape[1] - 7  # pad_more's padding is cut from the lists
    assert rows[seq].map(len).max() == width and rows[seq].map(len).min() == 0
    dense = dense_batch(rows, cols)
    assert dense[seq].shape == (16, width) and dense[seq].dtype == np.int32
    with torch.no_grad():
        want = torch.sigmoid(model({c: batch[c] for c in cols})["logit"].double()).numpy()
    assert score(model, rows) == pytest.approx(want, abs=1e-6)
    with pytest.raises(ValueError, match="lack the samples column"):
        score(model, rows.drop(columns=[seq]))
    too_big = rows.copy()
    too_big.at[0, seq] = [2**31]  # beyond the samples' int32 ids: an error, never a wrapped id
    with pytest.raises(ValueError, match=f"{seq}: sequence values must be in 0..2147483647"):
        score(model, too_big)
