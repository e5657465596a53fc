"""The recurrent baselines SIM is compared against: MIMN (long-term) and DIEN (short-term).

- ``MIMN``: Pi et al., KDD 2019, the memory network of SIM's Tables 2 and 4 row "MIMN"; it lives in
  ``sim.models.mimn`` (with its fused write, ``sim.models.mimn_fused``) and is re-exported here.
- ``DIEN``: Zhou et al., AAAI 2019, "Deep Interest Evolution Network for Click-Through Rate Prediction":
  a GRU interest extractor trained with a next-behavior auxiliary loss, then ``AUGRU``, a GRU whose update
  gate is scaled by target attention. SIM's Table 4 row "DIEN", the short-term production model.

Both read a sequence in behavior order (oldest -> newest). The samples table stores sequences newest
first with 0-padding at the end; ``chronological_index`` reverses the real part of each row, and loops
are cut to the longest real length of the batch, with padding steps masked so they change no state.

Shape legend: B batch, L sequence length (real part + padding), T = the batch's longest real length,
E behavior embedding dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.models.layers import masked_softmax
from sim.models.mimn import MIMN, MIMNState, gru_update

__all__ = ["AUGRU", "DIEN", "MIMN", "MIMNState", "chronological_index", "gather_steps", "gru_update"]


def chronological_index(mask: Tensor) -> Tensor:
    """Positions that put each row's real behaviors oldest first, padding staying at the end.

    Args:
        mask: B X L bool, True at real behaviors; real behaviors first (newest first), then padding.

    Returns:
        B X L long: ``index[b, t] = len_b - 1 - t`` for t < len_b, else t. It is its own inverse, so
        the same index maps a chronological tensor back to the samples' order.
    """
    length = mask.sum(dim=1, keepdim=True)
    t = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return torch.where(t < length, length - 1 - t, t)


def gather_steps(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, t]]`` for B X L (X F) values."""
    if values.dim() == 2:
        return values.gather(1, index)
    return values.gather(1, index.unsqueeze(-1).expand(-1, -1, values.shape[-1]))


class AUGRU(nn.Module):
    """GRU with attentional update gate (DIEN, Equations 7-8): h_t = h_{t-1} + a_t u_t (h~_t - h_{t-1}).

    u_t is the GRU update gate, a_t the step's attention score; a step with a_t = 0 leaves the state
    exactly as it was (so does padding, whose attention is 0).

    Args:
        input_dim: features of each input step.
        hidden_dim: state dim.
    """

    def __init__(self, input_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.hidden_dim = hidden_dim
        self.input_proj = nn.Linear(input_dim, 3 * hidden_dim)
        self.hidden_proj = nn.Linear(hidden_dim, 3 * hidden_dim)

    def forward(self, inputs: Tensor, attention: Tensor, h0: Tensor | None = None) -> Tensor:
        """Args:
            inputs: B X T X I, oldest first.
            attention: B X T scores a_t (0 at padding).
            h0: B X hidden initial state (zeros if None).

        Returns:
            B X hidden, the state after the last step.
        """
        b, steps, _ = inputs.shape
        h = inputs.new_zeros(b, self.hidden_dim) if h0 is None else h0
        # unbind, not indexing: the backward of x[t] writes into a zero tensor of all T steps, per
        # step (quadratic in T); unbind's is one stack.
        gi = self.input_proj(inputs).transpose(0, 1).contiguous().unbind(0)
        att = attention.t().unsqueeze(-1).unbind(0)
        for t in range(steps):
            i_r, i_u, i_n = gi[t].chunk(3, dim=-1)
            h_r, h_u, h_n = self.hidden_proj(h).chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            u = torch.sigmoid(i_u + h_u)
            n = torch.tanh(i_n + r * h_n)
            h = h + att[t] * u * (n - h)
        return h


class DIEN(nn.Module):
    """Deep Interest Evolution Network (Zhou et al., AAAI 2019) over the short-term sequence.

    - Interest extractor: a GRU over the behaviors, oldest first, states h_t (dim E).
    - Auxiliary loss (Equation 6): h_t should score the next behavior e_{t+1} above a negative, an
      e drawn from another row of the batch (in-batch sampling; the paper samples from the item pool):
      BCE on sigma(h_t . e_{t+1}) (label 1) and sigma(h_t . e_neg) (label 0), over the real pairs.
    - Interest evolving layer: a_t = softmax_t(h_t W e_a) over the real steps (Equation 3), then AUGRU
      over h_t; its state after the newest real behavior is the user interest.

    Where ours differs from the paper: negatives come from the batch, not the item pool; the AUGRU
    state width is E (the paper leaves it free); the auxiliary loss averages over the real pairs of
    the whole batch; the over-arch gets [interest, e_a] only (the paper's MLP also takes user profile
    and context features, which our samples do not have). The attention is the paper's bilinear form
    (the reference code of the MIMN authors uses a DIN-style MLP there).

    Args:
        dim: E.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.extractor = nn.GRU(dim, dim, batch_first=True)
        self.attention = nn.Linear(dim, dim, bias=False)
        self.evolution = AUGRU(dim, dim)

    def forward(self, target: Tensor, behaviors: Tensor, mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Args:
            target: B X E candidate embedding e_a.
            behaviors: B X L X E short sequence, newest first, padding at the end.
            mask: B X L bool.

        Returns:
            (interest B X E, attention a_t B X L in the samples' positions, auxiliary loss scalar).
        """
        b, full = mask.shape
        length = int(mask.sum(dim=1).max()) if mask.numel() else 0
        if length == 0:
            zero = target.new_zeros(())
            return target.new_zeros(b, self.evolution.hidden_dim), target.new_zeros(b, full), zero
        index = chronological_index(mask[:, :length])
        x = gather_steps(behaviors[:, :length], index)
        real = mask[:, :length]  # real steps stay first after the reversal
        # Padding sits after each row's real steps, so it cannot reach the states of real steps.
        h, _ = self.extractor(x)
        aux = self.auxiliary_loss(h, x, real)
        scores = torch.einsum("bte,be->bt", self.attention(h), target)
        att = masked_softmax(scores, real)
        interest = self.evolution(h, att)
        att_samples = F.pad(gather_steps(att, index), (0, full - length))
        return interest, att_samples, aux

    @staticmethod
    def auxiliary_loss(h: Tensor, x: Tensor, real: Tensor) -> Tensor:
        b, steps, _ = x.shape
        if steps < 2:
            return x.new_zeros(())
        pairs = real[:, 1:]  # e_{t+1} real implies e_t real
        pos = (h[:, :-1] * x[:, 1:]).sum(-1)
        # Negative of pair (row, t): a random real behavior of another row (the same row if B = 1).
        length = real.sum(dim=1)
        offset = torch.randint(1, max(b, 2), (b, steps - 1), device=x.device) % max(b, 1)
        row = (torch.arange(b, device=x.device).unsqueeze(1) + offset) % b
        row_len = length[row]
        col = (torch.rand(b, steps - 1, device=x.device) * row_len).long().clamp_max(steps - 1)
        neg_emb = x[row, col]
        pairs = pairs & (row_len > 0)
        neg = (h[:, :-1] * neg_emb).sum(-1)
        per_pair = F.softplus(-pos) + F.softplus(neg)  # BCE with labels 1 and 0
        w = pairs.to(per_pair.dtype)
        return (per_pair * w).sum() / w.sum().clamp_min(1.0)
