"""MIMN (Pi et al., KDD 2019, "Practice on Long Sequential User Behavior Modeling for Click-Through Rate
Prediction", Section 4.2): an NTM memory written behavior by behavior by a GRU controller, with Memory
Utilization Regularization and the Memory Induction Unit. SIM's Tables 2 and 4 row "MIMN".

The memory is written by one of two implementations of the same computation (``MIMN(impl=...)``, the
model config key ``mimn_impl``):

- ``fused`` (the default): ``sim.models.mimn_fused``, a compiled kernel that runs each row's whole write,
  forward and backward, in one pass over its behaviors, 8 rows per SIMD block (why its results are the
  reference's to float tolerance is said there). Measured on a 2-core CPU shared with other jobs, at
  L = 1,000, batch 256: the module's forward + backward took 7.7x less CPU time than the reference on
  one thread, 10x on two; whole training steps (``bench/bench_train.py``) ran 5-17x faster at one
  process, 7.3x per process at two. Where it cannot run (off the CPU, other dtypes, no C compiler) the
  reference runs instead.
- ``reference``: ``MIMN._step`` in torch, stepped over the batch and differentiated by autograd; the
  definition the fused kernel is tested against.

The samples table stores sequences newest first with 0-padding at the end; both walk each row's real
behaviors from its oldest, and a padded position changes no state.

Shape legend: B batch, L sequence length (real part + padding), E behavior embedding dim, H controller
dim, m memory slots.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.models import mimn_fused
from sim.models.layers import TargetAttention

IMPLS = ("fused", "reference")


def gru_update(gi: Tensor, gh: Tensor, h: Tensor) -> Tensor:
    """One GRU step (PyTorch's gate layout r, z, n) from precomputed input and hidden projections.

    Splitting the projections lets a recurrence compute the input part of every step in one matmul
    before its loop.

    Args:
        gi: ... X 3H, W_i x + b_i.
        gh: ... X 3H, W_h h + b_h.
        h: ... X H, the previous state.

    Returns:
        ... X H, the next state.
    """
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)


class MIMNState(NamedTuple):
    """What MIMN carries from one behavior to the next.

    Attributes:
        controller: B X H GRU controller state.
        read: B X E last read vector r_t (fed back to the controller).
        memory: B X m X E memory M_t.
        usage: B X m g_t, accumulated re-scaled write weights (sums to the behaviors written).
        miu: B X m X E Memory Induction Unit states S_t.
        read_weights: B X m last read weights w^r_t.
        write_weights: B X m last re-scaled write weights.
    """

    controller: Tensor
    read: Tensor
    memory: Tensor
    usage: Tensor
    miu: Tensor
    read_weights: Tensor
    write_weights: Tensor


class MIMN(nn.Module):
    """Multi-channel user Interest Memory Network (Pi et al., KDD 2019), the memory of Section 4.2.

    Per behavior e_t, oldest first:

    1. Controller: h_t = GRU([e_t, r_{t-1}], h_{t-1}); a linear layer of h_t gives a read and a write
       head (key k, strength beta = 1 + softplus), an erase vector (sigmoid) and an add vector (tanh).
    2. Content addressing against M_{t-1}: w(i) = softmax_i(beta * cos(k, M_{t-1}(i))).
    3. Memory Utilization Regularization: the write weights are re-scaled by the slots' accumulated
       usage, w~ = normalise(w^w * P_t), P_t = softmax(W_g u_{t-1}), so that rarely used slots are
       favoured (W_g starts at -m * I), g_t = g_{t-1} + w~. The regulariser (``utilization_loss``) is
       the variance of the usage across slots.
    4. Write: M_t = M_{t-1} * (1 - w~ e^T) + w~ a^T. Read: r_t = sum_i w^r(i) M_t(i).
    5. Memory Induction Unit: for the top-k slots by read weight, S_t(i) = GRU([M_t(i), e_t], S_{t-1}(i));
       the other slots' S stay as they were.

    Finally the candidate reads both the memory slots and the MIU states by target attention
    (softmax over the m slots); u_long = [read of M_T, read of S_T].

    Where ours differs from the paper and its reference code:

    - The memory is written per sample from the stored long sequence in one pass, in training and in
      scoring; the paper's serving system (UIC) updates it incrementally per behavior event.
    - The usage fed to W_g is the share u = g / |g|_1 (P_t = softmax(W_g u) instead of softmax(W_g g)),
      so its scale does not grow with the history length, and the regulariser is the variance of that
      share (the paper: of g itself, which grows with the square of the length). W_g starts at -m * I
      rather than at random, so re-scaling favours rarely used slots from the first step.
    - w~ is renormalised to sum to 1 (computed as a softmax of beta * cos + log P, which never
      underflows); the paper writes w~ = w^w P_t. The reference code instead shifts and sharpens the
      write weights (NTM location addressing); we keep to the paper's re-scaling.
    - The initial memory M_0 is a learned m X E parameter (distinct rows so cosine addressing can tell
      the slots apart from the first step); the reference code averages the cosine against the
      memory with one against learned slot keys.
    - One read and one write head; no clipping of the head parameters; MIU input is the slot content
      after this step's write (the reference uses the content before it, without its gradient).
    - The output is target attention over slots and MIU states; the reference code also feeds the
      controller's final read and the mean added memory to its MLP.

    Args:
        dim: E, behavior embedding dim (= memory slot width = MIU state width).
        slots: m.
        controller_dim: H.
        miu_topk: slots whose MIU state a behavior updates (k, 1 in the paper).
        attention_hidden: widths of the final target-attention score MLPs.
        impl: how ``write`` runs: "fused" (``sim.models.mimn_fused``) or "reference" (``_step`` in
            torch); same parameters, same results to float tolerance. An attribute, not state: it can
            be changed on a built model, and checkpoints do not depend on it.
    """

    def __init__(self, dim: int, slots: int = 4, controller_dim: int = 32, miu_topk: int = 1,
                 attention_hidden: Sequence[int] = (80, 40), impl: str = "fused") -> None:
        super().__init__()
        if slots < 1 or not 1 <= miu_topk <= slots:
            raise ValueError(f"need slots >= 1 and 1 <= miu_topk <= slots, got {slots}, {miu_topk}")
        if impl not in IMPLS:
            raise ValueError(f"MIMN impl must be one of {IMPLS}, got {impl!r}")
        self.dim, self.slots, self.controller_dim, self.miu_topk = dim, slots, controller_dim, miu_topk
        self.impl = impl
        # Controller GRU, its input [e_t, r_{t-1}] split so the e_t part is computed for all steps at once.
        self.controller_in = nn.Linear(dim, 3 * controller_dim)
        self.controller_read = nn.Linear(dim, 3 * controller_dim, bias=False)
        self.controller_hidden = nn.Linear(controller_dim, 3 * controller_dim)
        # Read key, write key (E each), two strengths, erase and add vectors (E each).
        self.heads = nn.Linear(controller_dim, 4 * dim + 2)
        self.usage_weight = nn.Linear(slots, slots, bias=False)  # W_g
        with torch.no_grad():
            self.usage_weight.weight.copy_(-float(slots) * torch.eye(slots))
        self.memory_init = nn.Parameter(torch.randn(slots, dim) * 0.5)
        # MIU GRU over [M_t(i), e_t], shared by the slots; the e_t part again precomputed.
        self.miu_in = nn.Linear(dim, 3 * dim)
        self.miu_slot = nn.Linear(dim, 3 * dim, bias=False)
        self.miu_hidden = nn.Linear(dim, 3 * dim)
        self.memory_attention = TargetAttention(dim, attention_hidden, normalization="softmax")
        self.miu_attention = TargetAttention(dim, attention_hidden, normalization="softmax")

    @property
    def out_dim(self) -> int:
        """Features of u_long: 2E."""
        return 2 * self.dim

    def initial_state(self, batch: int) -> MIMNState:
        """State before the first behavior: M_0 in every row, everything else 0."""
        p = self.memory_init
        zeros = p.new_zeros
        return MIMNState(zeros(batch, self.controller_dim), zeros(batch, self.dim),
                         p.unsqueeze(0).expand(batch, -1, -1), zeros(batch, self.slots),
                         zeros(batch, self.slots, self.dim), zeros(batch, self.slots),
                         zeros(batch, self.slots))

    def step(self, state: MIMNState, behavior: Tensor, mask: Tensor) -> MIMNState:
        """Write one behavior per row.

        Args:
            state: the state after the previous behavior.
            behavior: B X E, e_t.
            mask: B bool; rows where it is False keep their state unchanged.
        """
        return self._step(state, self.controller_in(behavior), self.miu_in(behavior), mask)

    def _step(self, s: MIMNState, controller_in: Tensor, miu_in: Tensor, mask: Tensor | None) -> MIMNState:
        """``mask`` None: every row writes (no masking work)."""
        e = self.dim
        h = gru_update(controller_in + self.controller_read(s.read),
                       self.controller_hidden(s.controller), s.controller)
        p = self.heads(h)
        keys = p[:, :2 * e].unflatten(1, (2, e))
        beta = 1.0 + F.softplus(p[:, 2 * e:2 * e + 2])
        erase = torch.sigmoid(p[:, 2 * e + 2:3 * e + 2]).unsqueeze(1)
        add = torch.tanh(p[:, 3 * e + 2:]).unsqueeze(1)
        # Cosine similarity of both heads' keys with every slot: B X 2 X m.
        cos = torch.bmm(F.normalize(keys, dim=-1), F.normalize(s.memory, dim=-1).transpose(1, 2))
        logits = beta.unsqueeze(-1) * cos
        w_read = torch.softmax(logits[:, 0], dim=-1)
        share = s.usage / s.usage.sum(dim=-1, keepdim=True).clamp_min(1.0)
        # normalise(w * P) as one softmax: beta * cos + log P.
        w_write = torch.softmax(logits[:, 1] + torch.log_softmax(self.usage_weight(share), dim=-1), dim=-1)
        ww = w_write.unsqueeze(-1)
        memory = s.memory * (1.0 - ww * erase) + ww * add
        read = torch.bmm(w_read.unsqueeze(1), memory).squeeze(1)
        top = w_read.topk(self.miu_topk, dim=-1).indices
        chosen = torch.zeros_like(w_read, dtype=torch.bool).scatter_(1, top, True)
        if mask is not None:
            chosen = chosen & mask.unsqueeze(1)
        miu_new = gru_update(miu_in.unsqueeze(1) + self.miu_slot(memory), self.miu_hidden(s.miu), s.miu)
        miu = torch.where(chosen.unsqueeze(-1), miu_new, s.miu)
        if mask is None:
            return MIMNState(h, read, memory, s.usage + w_write, miu, w_read, w_write)
        m1, m2 = mask.unsqueeze(1), mask.view(-1, 1, 1)
        return MIMNState(torch.where(m1, h, s.controller), torch.where(m1, read, s.read),
                         torch.where(m2, memory, s.memory), torch.where(m1, s.usage + w_write, s.usage),
                         miu, torch.where(m1, w_read, s.read_weights), torch.where(m1, w_write, s.write_weights))

    def write(self, behaviors: Tensor, mask: Tensor) -> MIMNState:
        """Write a batch of sequences, each oldest behavior first, by ``self.impl``.

        Args:
            behaviors: B X L X E, newest first, padding at the end (as the samples store them).
            mask: B X L bool, True at real behaviors.

        Returns:
            The state after each row's newest behavior.
        """
        if self.impl == "fused" and mimn_fused.supported(behaviors):
            return MIMNState(*mimn_fused.fused_write(self, behaviors, mask))
        return self.write_reference(behaviors, mask)

    def write_reference(self, behaviors: Tensor, mask: Tensor) -> MIMNState:
        """``write`` by ``_step``, one behavior position of the whole batch at a time."""
        b = behaviors.shape[0]
        lengths = mask.sum(dim=1)
        length = int(lengths.max()) if mask.numel() else 0
        state = self.initial_state(b)
        if length == 0:
            return state
        x = behaviors[:, :length]
        # Input projections of every step in one matmul each. unbind, not indexing: the backward of
        # x[t] writes into a zero tensor of all T steps, per step (quadratic in T); unbind's is one stack.
        controller_in = self.controller_in(x).transpose(0, 1).contiguous().unbind(0)
        miu_in = self.miu_in(x).transpose(0, 1).contiguous().unbind(0)
        steps = mask[:, :length].t().unbind(0)
        # Positions run newest -> oldest, so walking them backwards writes in behavior order; a row's
        # padding positions come first in that walk and are masked. Positions below the shortest row's
        # length are real in every row and need no mask.
        shortest = int(lengths.min())
        for t in range(length - 1, -1, -1):
            state = self._step(state, controller_in[t], miu_in[t], steps[t] if t >= shortest else None)
        return state

    @staticmethod
    def utilization_loss(state: MIMNState) -> Tensor:
        """Memory Utilization Regularization: variance across slots of each row's usage share, batch mean.

        Returns:
            Scalar; 0 when every slot received the same write mass (or the row wrote nothing).
        """
        share = state.usage / state.usage.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return share.var(dim=-1, unbiased=False).mean()

    def forward(self, target: Tensor, behaviors: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Args:
            target: B X E candidate embedding e_a.
            behaviors: B X L X E long sequence, newest first.
            mask: B X L bool.

        Returns:
            (u_long B X 2E, dict with ``memory_read`` B X m and ``miu_read`` B X m, the target's
            attention over slots and MIU states, ``memory_usage`` B X m, each slot's share of the
            write mass, and ``mimn_util_loss``, the regulariser, a scalar).
        """
        state = self.write(behaviors, mask)
        all_slots = torch.ones(target.shape[0], self.slots, dtype=torch.bool, device=target.device)
        u_memory, a_memory = self.memory_attention(target, state.memory, all_slots)
        u_miu, a_miu = self.miu_attention(target, state.miu, all_slots)
        usage = state.usage / state.usage.sum(dim=-1, keepdim=True).clamp_min(1.0)
        return torch.cat([u_memory, u_miu], dim=-1), {
            "memory_read": a_memory, "miu_read": a_miu, "memory_usage": usage,
            "mimn_util_loss": self.utilization_loss(state)}
