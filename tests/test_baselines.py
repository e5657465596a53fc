"""Tests of the recurrent baselines (sim.models.baselines): MIMN's memory, regulariser and MIU; DIEN's
extractor, auxiliary loss and AUGRU. The shared model tests (shapes, padding, learning) are in
test_models.py and cover these models too."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from sim.models import build_model, model_defaults  # noqa: E402
from sim.models.baselines import AUGRU, DIEN, MIMN, chronological_index, gather_steps  # noqa: E402
from test_models import SMALL, make_batch, pad_more  # noqa: E402

torch.set_num_threads(2)


def reverse_real(batch: dict[str, Tensor], seq: str) -> dict[str, Tensor]:
    """The batch with the real part of every row of ``seq`` in the opposite order."""
    out = dict(batch)
    index = chronological_index(batch[f"{seq}_items"] > 0)
    for f in ("items", "cats", "gaps"):
        out[f"{seq}_{f}"] = batch[f"{seq}_{f}"].gather(1, index)
    return out


def test_chronological_index_reverses_the_real_part_only() -> None:
    mask = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    index = chronological_index(mask)
    assert index.tolist() == [[2, 1, 0, 3], [0, 1, 2, 3], [0, 1, 2, 3]]
    assert torch.equal(index.gather(1, index), torch.arange(4).expand(3, 4))  # its own inverse


# ---------------------------------------------------------------------------------------------- MIMN

def test_mimn_is_order_sensitive() -> None:
    batch = make_batch(b=32, long=24, seed=11)
    torch.manual_seed(0)
    model = build_model("mimn", SMALL).eval()
    with torch.no_grad():
        a, b = model(batch), model(reverse_real(batch, "long"))
    rows = batch["long_len"] >= 2
    changed = (a["logit"] - b["logit"]).abs() > 1e-5
    # Only the long branch saw a different input, and it noticed in (nearly) every row it could.
    assert changed[rows].float().mean() > 0.9, changed
    assert not changed[~rows].any()


# Without an empty row, the steps below the shortest length run without masks.
@pytest.mark.parametrize("lengths", [[5, 2, 0, 3], [5, 3, 4, 6]])
def test_mimn_writes_oldest_first_and_ignores_padding(lengths: list[int]) -> None:
    torch.manual_seed(0)
    mimn = MIMN(dim=8, slots=4, controller_dim=12, miu_topk=1, attention_hidden=(8,))
    lengths = torch.tensor(lengths)
    mask = torch.arange(6).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.randn(4, 6, 8) * mask.unsqueeze(-1)
    with torch.no_grad():
        state = mimn.write(x, mask)
        padded = mimn.write(torch.cat([x, torch.randn(4, 9, 8)], 1),
                            torch.cat([mask, torch.zeros(4, 9, dtype=torch.bool)], 1))
        for field, a, b in zip(state._fields, state, padded):
            assert torch.equal(a, b), field
        for r, n in enumerate(lengths.tolist()):
            # One row alone, stepped by hand from its oldest behavior (the last real position) on.
            by_hand = mimn.initial_state(1)
            for t in range(n - 1, -1, -1):
                by_hand = mimn.step(by_hand, x[r:r + 1, t], torch.ones(1, dtype=torch.bool))
            for field, a, b in zip(state._fields, state, by_hand):
                assert torch.allclose(a[r:r + 1], b, atol=1e-6), (r, field)
    for r in (lengths == 0).nonzero().flatten().tolist():
        # A row with no behavior keeps the initial memory and an empty MIU.
        assert torch.equal(state.memory[r], mimn.memory_init.detach())
        assert torch.equal(state.miu[r], torch.zeros(4, 8))


def _one_slot_writer(slots: int = 4, dim: int = 8) -> MIMN:
    """A MIMN whose heads ignore the controller: the write head's key is slot 0's initial content with a
    high strength, nothing is erased and the add vector points the same way, so without re-scaling slot 0
    takes nearly every write."""
    torch.manual_seed(0)
    mimn = MIMN(dim=dim, slots=slots, controller_dim=8, attention_hidden=(8,))
    with torch.no_grad():
        mimn.memory_init.copy_(torch.eye(slots, dim))
        mimn.heads.weight.zero_()
        bias = torch.zeros(4 * dim + 2)
        bias[dim:2 * dim] = mimn.memory_init[0]          # write key
        bias[2 * dim:2 * dim + 2] = 6.0                  # strengths
        bias[2 * dim + 2:3 * dim + 2] = -8.0             # erase ~ 0
        bias[3 * dim + 2:] = 0.5 * mimn.memory_init[0]   # add along slot 0
        mimn.heads.bias.copy_(bias)
    return mimn


def _usage_variance(mimn: MIMN, x: Tensor, mask: Tensor) -> float:
    with torch.no_grad():
        return float(MIMN.utilization_loss(mimn.write(x, mask)))


def test_utilization_rescaling_spreads_the_writes() -> None:
    x, mask = torch.randn(8, 30, 8), torch.ones(8, 30, dtype=torch.bool)
    mimn = _one_slot_writer()
    with torch.no_grad():
        state = mimn.write(x, mask)
        rescaled = float(MIMN.utilization_loss(state))
        mimn.usage_weight.weight.zero_()  # P_t uniform: the plain content-based write weights
        plain_state = mimn.write(x, mask)
        plain = float(MIMN.utilization_loss(plain_state))
    share = plain_state.usage / plain_state.usage.sum(-1, keepdim=True)
    assert share[:, 0].min() > 0.9  # the setup: one slot dominates
    assert rescaled < 0.2 * plain, (rescaled, plain)
    assert torch.allclose(state.usage.sum(-1), torch.full((8,), 30.0), atol=1e-4)  # write weights sum to 1


def test_utilization_regulariser_lowers_the_variance_of_slot_usage() -> None:
    x, mask = torch.randn(8, 30, 8), torch.ones(8, 30, dtype=torch.bool)
    mimn = _one_slot_writer()
    with torch.no_grad():
        mimn.usage_weight.weight.zero_()  # start from no re-scaling; the regulariser must learn it
    opt = torch.optim.Adam(mimn.parameters(), lr=0.05)
    first = _usage_variance(mimn, x, mask)
    for _ in range(6):
        opt.zero_grad()
        MIMN.utilization_loss(mimn.write(x, mask)).backward()
        opt.step()
    final = _usage_variance(mimn, x, mask)
    assert final < 0.5 * first, (first, final)


def test_miu_updates_exactly_the_read_slots() -> None:
    torch.manual_seed(1)
    for topk in (1, 2):
        mimn = MIMN(dim=8, slots=4, controller_dim=12, miu_topk=topk, attention_hidden=(8,))
        state = mimn.initial_state(6)
        mask = torch.tensor([True, True, True, True, True, False])
        with torch.no_grad():
            for _ in range(5):
                new = mimn.step(state, torch.randn(6, 8), mask)
                read = torch.zeros(6, 4, dtype=torch.bool).scatter_(
                    1, new.read_weights.topk(topk, dim=-1).indices, True) & mask.unsqueeze(1)
                changed = (new.miu != state.miu).any(dim=-1)
                assert torch.equal(changed, read), (topk, changed, read)
                state = new
        assert torch.equal(state.miu[5], torch.zeros(4, 8))  # the masked row never changed


def test_miu_state_follows_a_known_read_slot() -> None:
    """The read head keyed on slot 2 (strongly): after a sequence, slot 2's MIU state has moved, the
    others' are still zero."""
    mimn = _one_slot_writer()
    with torch.no_grad():
        mimn.heads.bias[:8] = 5 * mimn.memory_init[2]  # read key
        lengths = torch.tensor([7, 3, 1, 0])
        mask = torch.arange(7).unsqueeze(0) < lengths.unsqueeze(1)
        state = mimn.write(torch.randn(4, 7, 8), mask)
    assert bool((state.read_weights[:3].argmax(-1) == 2).all())
    assert bool((state.miu[:3, 2].abs().sum(-1) > 0).all())
    assert torch.equal(state.miu[:, [0, 1, 3]], torch.zeros(4, 3, 8))
    assert torch.equal(state.miu[3], torch.zeros(4, 8))


def test_mimn_loss_adds_the_utilization_regulariser() -> None:
    batch = make_batch(seed=12)
    y = batch["label"].float()
    for weight in (1.0, 0.3, 0.0):
        model = build_model("mimn", {**SMALL, "mimn_util_reg": weight})
        out = model(batch)
        assert out["memory_read"].shape == out["miu_read"].shape == out["memory_usage"].shape == (16, 4)
        assert out["mimn_util_loss"].shape == () and out["mimn_util_loss"] > 0
        expected = F.binary_cross_entropy_with_logits(out["logit"], y) + weight * out["mimn_util_loss"]
        assert torch.allclose(model.loss(out, batch["label"]), expected)
    assert model_defaults()["mimn_util_reg"] > 0 and model_defaults()["mimn_miu_topk"] == 1
    with pytest.raises(ValueError, match="miu_topk"):
        build_model("mimn", {**SMALL, "mimn_miu_topk": 5})


def test_mimn_trains_on_long_sequences() -> None:
    """A step over 300 behaviors gives finite gradients everywhere, the memory's parameters included."""
    batch = make_batch(b=4, long=300, seed=13)
    model = build_model("mimn", SMALL)
    out = model(batch)
    model.loss(out, batch["label"]).backward()
    assert model.memory is not None
    for name, p in model.memory.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.memory.usage_weight.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------- DIEN

def test_augru_with_zero_attention_keeps_its_state() -> None:
    torch.manual_seed(0)
    augru = AUGRU(4, 6)
    x, h0 = torch.randn(3, 5, 4), torch.randn(3, 6)
    with torch.no_grad():
        assert torch.equal(augru(x, torch.zeros(3, 5), h0), h0)
        moved = augru(x, torch.ones(3, 5), h0)
        # Attention only on the last step = one plain GRU step (update gate unscaled) from h0.
        one = augru(x, F.pad(torch.ones(3, 1), (4, 0)), h0)
        assert torch.equal(augru(x[:, :4], torch.zeros(3, 4), h0), h0)
        last = augru(x[:, 4:], torch.ones(3, 1), h0)
    assert not torch.allclose(moved, h0)
    assert torch.allclose(one, last, atol=1e-6)


def test_dien_extractor_runs_in_behavior_order() -> None:
    torch.manual_seed(0)
    dien = DIEN(8)
    lengths = torch.tensor([4, 1, 3])
    mask = torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)
    x = torch.randn(3, 5, 8) * mask.unsqueeze(-1)
    target = torch.randn(3, 8)
    with torch.no_grad():
        interest, att, _ = dien(target, x, mask)
        for r, n in enumerate(lengths.tolist()):
            oldest_first = x[r:r + 1, :n].flip(1)
            h, _ = dien.extractor(oldest_first)
            scores = torch.einsum("bte,be->bt", dien.attention(h), target[r:r + 1])
            a = torch.softmax(scores, dim=-1)
            assert torch.allclose(att[r, :n], a[0].flip(0), atol=1e-6)  # back in the samples' order
            assert torch.allclose(interest[r], dien.evolution(h, a)[0], atol=1e-6)
    assert bool((att[~mask] == 0).all())
    assert torch.allclose(att.sum(-1), torch.ones(3), atol=1e-6)


def test_dien_auxiliary_loss_pairs_each_state_with_the_next_real_behavior() -> None:
    # Behaviors are one-hot, a different dimension per row and step; negatives (other rows) are orthogonal
    # to every state, so each negative costs exactly ln 2.
    x = torch.zeros(3, 4, 12)
    for r in range(3):
        for t in range(4):
            x[r, t, 4 * r + t] = 1.0
    real = torch.tensor([[True] * 4, [True, True, False, False], [True] * 4])
    ahead = torch.zeros_like(x)
    ahead[:, :-1] = 10 * x[:, 1:]  # h_t = 10 e_{t+1}
    ahead[1, 1:] = 1e4             # row 1's states past its last pair must not count
    same = 10 * x                  # h_t = 10 e_t: the wrong pairing
    ln2 = torch.log(torch.tensor(2.0))
    right = DIEN.auxiliary_loss(ahead, x, real)
    wrong = DIEN.auxiliary_loss(same, x, real)
    assert torch.allclose(right, ln2 + F.softplus(torch.tensor(-10.0)), atol=1e-4), right
    assert torch.allclose(wrong, 2 * ln2, atol=1e-4), wrong


def planted_next_item_batch(b: int = 64, s: int = 10, items: int = 40, seed: int = 0) -> dict[str, Tensor]:
    """Short sequences where item i is always followed by item i + 1 (stored newest first)."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(1, items - s, (b,), generator=g)
    lens = torch.randint(3, s + 1, (b,), generator=g)
    chrono = start.unsqueeze(1) + torch.arange(s)
    real = torch.arange(s).unsqueeze(0) < lens.unsqueeze(1)
    newest_first = chrono.gather(1, chronological_index(real)) * real
    return {"item_id": torch.randint(1, items, (b,), generator=g),
            "category_id": torch.ones(b, dtype=torch.long),
            "short_items": newest_first, "short_cats": (newest_first > 0).long(),
            "label": torch.randint(0, 2, (b,), generator=g)}


def test_dien_auxiliary_loss_falls_on_a_planted_next_item_pattern() -> None:
    batch = planted_next_item_batch()
    torch.manual_seed(0)
    model = build_model("dien", SMALL)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(200):
        opt.zero_grad()
        out = model(batch)
        losses.append(out["dien_aux_loss"].item())
        out["dien_aux_loss"].backward()
        opt.step()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 1.2  # 2 ln 2 at the start: h_t . e ~ 0
    assert last < 0.5 * first, (first, last)  # random next items: about 0.85 * first


def test_dien_reads_only_the_short_sequence_and_adds_its_auxiliary_loss() -> None:
    model = build_model("dien", SMALL)
    assert model.sequences == ("short",)
    assert model.input_columns == ("item_id", "category_id", "short_items", "short_cats")
    assert not hasattr(model, "short_attention") and not hasattr(model, "memory")
    batch = make_batch(seed=14)
    y = batch["label"].float()
    for weight in (1.0, 0.5, 0.0):
        model = build_model("dien", {**SMALL, "dien_aux_weight": weight})
        torch.manual_seed(0)
        out = model(batch)
        assert out["dien_aux_loss"].shape == () and out["dien_aux_loss"] > 0
        expected = F.binary_cross_entropy_with_logits(out["logit"], y) + weight * out["dien_aux_loss"]
        assert torch.allclose(model.loss(out, batch["label"]), expected)
    assert model_defaults()["dien_aux_weight"] == 1.0


def test_dien_padding_changes_nothing_but_order_does() -> None:
    batch = make_batch(b=32, s=8, long=24, seed=15)
    torch.manual_seed(0)
    model = build_model("dien", SMALL).eval()
    with torch.no_grad():
        a, padded, reversed_ = model(batch), model(pad_more(batch)), model(reverse_real(batch, "short"))
    assert torch.equal(a["logit"], padded["logit"])
    rows = (batch["short_items"] > 0).sum(1) >= 2
    assert ((a["logit"] - reversed_["logit"]).abs() > 1e-6)[rows].float().mean() > 0.9


def test_gather_steps() -> None:
    v = torch.arange(6.).view(1, 3, 2)
    assert gather_steps(v, torch.tensor([[2, 0, 1]])).tolist() == [[[4., 5.], [0., 1.], [2., 3.]]]
