"""SIM (Pi et al., CIKM 2020, Figure 1) and the paper's baselines as compositions of one model class.

``CTRModel`` = a short-term branch + an optional long-term branch + the Embedding&MLP over-arch.
Which branches (Section 5 "Competitors" / Table 2-4) is a ``ModelSpec``:

| name             | short-term branch | long-term branch                                            |
|------------------|-------------------|-------------------------------------------------------------|
| din              | DIN               | none                                                        |
| dien             | DIEN              | none (the industrial baseline of Table 4)                   |
| avgpool_long_din | DIN               | masked mean of the long sequence                            |
| mimn             | DIN               | MIMN memory + MIU written in behavior order, read by target |
| gsu_only_hard    | DIN               | hard GSU, its K behaviors avg-pooled ("only first stage")   |
| gsu_only_soft    | DIN               | soft GSU (+ aux CTR head), K behaviors avg-pooled           |
| sim_hard         | DIN               | hard GSU -> ESU                                             |
| sim_soft         | DIN               | soft GSU (+ aux CTR head) -> ESU                            |
| sim_hard_time    | DIN               | hard GSU -> ESU with time-gap embeddings                    |
| sim_soft_time    | DIN               | soft GSU (+ aux CTR head) -> ESU with time-gap embeddings   |

"Only First Stage (soft)" (Table 3) in the paper searches with embeddings fixed after a pre-training
run; ``gsu_only_soft`` trains the search and the embeddings jointly with the CTR loss (one run, as SIM
soft itself), so it is the paper's ablation without the separate pre-training (docs/RESULTS.md).

Loss (Equation 5): alpha * L_GSU + beta * L_ESU, alpha = beta = 1 with soft search; hard search is
non-parametric, so alpha = 0 and no GSU term exists at all. DIEN adds its next-behavior auxiliary loss
(``dien_aux_weight``), MIMN its memory utilisation regulariser (``mimn_util_reg``); see
``sim.models.baselines``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sim.models.baselines import DIEN, MIMN
from sim.models.config import ModelConfig, model_defaults
from sim.models.layers import Behaviors, FeatureEmbedding, MLP, TargetAttention, masked_mean
from sim.models.search import ExactSearchUnit, GeneralSearchUnit

LONG_BRANCHES = ("none", "avgpool", "mimn", "gsu_pool", "esu", "din_long")
SHORT_BRANCHES = ("din", "dien")


@dataclass(frozen=True)
class ModelSpec:
    """Which parts a model is made of.

    Attributes:
        long_branch: "none", "avgpool" (mean of long_*), "mimn" (memory over long_*),
            "gsu_pool" (GSU output avg-pooled), "esu" (GSU -> ESU), "din_long" (DIN target
            attention over all of long_*; not a paper model, the cost reference of the benchmark).
        gsu_mode: "hard" or "soft" for the gsu_pool / esu branches, else None.
        with_time: ESU z_j carries the time-gap embedding.
        short_branch: "din" (DIN target attention over short_*) or "dien" (DIEN: GRU interest
            extractor + auxiliary loss + AUGRU over short_*).
    """

    long_branch: str = "none"
    gsu_mode: str | None = None
    with_time: bool = False
    short_branch: str = "din"

    def __post_init__(self) -> None:
        if self.short_branch not in SHORT_BRANCHES:
            raise ValueError(f"short_branch must be one of {SHORT_BRANCHES}, got {self.short_branch!r}")
        if self.long_branch not in LONG_BRANCHES:
            raise ValueError(f"long_branch must be one of {LONG_BRANCHES}, got {self.long_branch!r}")
        needs_gsu = self.long_branch in ("gsu_pool", "esu")
        if needs_gsu != (self.gsu_mode in ("hard", "soft")):
            raise ValueError(f"long_branch {self.long_branch!r} and gsu_mode {self.gsu_mode!r} "
                             "do not fit: gsu_pool/esu need 'hard' or 'soft', others None")
        if self.with_time and self.long_branch != "esu":
            raise ValueError("with_time needs the ESU branch")


MODEL_SPECS: dict[str, ModelSpec] = {
    "din": ModelSpec(),
    "dien": ModelSpec(short_branch="dien"),
    "avgpool_long_din": ModelSpec("avgpool"),
    "mimn": ModelSpec("mimn"),
    "gsu_only_hard": ModelSpec("gsu_pool", "hard"),
    "gsu_only_soft": ModelSpec("gsu_pool", "soft"),
    "sim_hard": ModelSpec("esu", "hard"),
    "sim_soft": ModelSpec("esu", "soft"),
    "sim_hard_time": ModelSpec("esu", "hard", with_time=True),
    "sim_soft_time": ModelSpec("esu", "soft", with_time=True),
}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)


def _sequence(batch: Mapping[str, Tensor], name: str) -> Behaviors:
    """One sequence of the batch; without its ``*_gaps`` column (a model without time information
    need not read it) the gaps are all padding."""
    items = batch[f"{name}_items"]
    gaps = batch.get(f"{name}_gaps")
    return Behaviors(items, batch[f"{name}_cats"], torch.zeros_like(items) if gaps is None else gaps)


class CTRModel(nn.Module):
    """SIM and its baselines: [U_lt, short-term interest, e_a] -> MLP -> CTR logit.

    Args:
        spec: which long-term branch (see ``ModelSpec``).
        cfg: a ``ModelConfig`` or overrides of ``model_defaults()``, validated by ``ModelConfig``
            (pydantic.ValidationError, a ValueError, naming the key).
        name: the model's registry name (for logs and checkpoints).

    Shape legend: B batch, S short length, K hard/soft-search length, L long length, E = 2 * emb_dim,
    H ESU heads.
    """

    def __init__(self, spec: ModelSpec, cfg: Mapping[str, Any] | ModelConfig | None = None,
                 name: str = "") -> None:
        super().__init__()
        c = (cfg if isinstance(cfg, ModelConfig) else ModelConfig.model_validate(dict(cfg or {}))).model_dump()
        self.cfg = c
        self.spec = spec
        self.name = name
        soft = spec.gsu_mode == "soft"
        alpha = c["gsu_alpha"]
        if not soft and alpha not in (None, 0, 0.0):
            raise ValueError(f"gsu_alpha={alpha} needs a soft-search model; {name or spec} has no "
                             "GSU loss (hard search is non-parametric, alpha = 0)")
        self.gsu_alpha = (1.0 if alpha is None else float(alpha)) if soft else 0.0
        self.esu_beta = 1.0 if c["esu_beta"] is None else float(c["esu_beta"])
        self.mimn_util_reg = float(c["mimn_util_reg"]) if spec.long_branch == "mimn" else 0.0
        self.dien_aux_weight = float(c["dien_aux_weight"]) if spec.short_branch == "dien" else 0.0

        self.embedding = FeatureEmbedding(c["item_buckets"], c["category_buckets"],
                                          c["time_gap_buckets"], c["emb_dim"])
        e_dim = self.embedding.behavior_dim
        self.embedding_l2 = float(c["embedding_l2"])
        self.short_attention: TargetAttention | None = None
        self.dien: DIEN | None = None
        if spec.short_branch == "dien":
            self.dien = DIEN(e_dim)
        else:
            self.short_attention = TargetAttention(e_dim, c["attention_dims"], c["din_normalization"])

        self.gsu: GeneralSearchUnit | None = None
        self.esu: ExactSearchUnit | None = None
        self.memory: MIMN | None = None
        self.long_attention: TargetAttention | None = None
        long_dim = 0
        if spec.long_branch in ("gsu_pool", "esu"):
            if soft:
                self.gsu = GeneralSearchUnit("soft", k=c["soft_k"], behavior_dim=e_dim,
                                             proj_dim=c["gsu_proj_dim"], aux_hidden=c["mlp_dims"],
                                             aux_pooling=c["gsu_aux_pooling"], dropout=c["dropout"],
                                             init=c["gsu_init"])
            else:
                self.gsu = GeneralSearchUnit("hard", k=c["hard_k"])
            long_dim = e_dim
        if spec.long_branch == "esu":
            self.esu = ExactSearchUnit(e_dim, c["emb_dim"], c["esu_heads"], c["esu_proj_dim"],
                                       spec.with_time)
            long_dim = self.esu.out_dim
        elif spec.long_branch == "avgpool":
            long_dim = e_dim
        elif spec.long_branch == "mimn":
            self.memory = MIMN(e_dim, c["mimn_slots"], c["mimn_controller_dim"], c["mimn_miu_topk"],
                               c["attention_dims"])
            long_dim = self.memory.out_dim
        elif spec.long_branch == "din_long":
            self.long_attention = TargetAttention(e_dim, c["attention_dims"], c["din_normalization"])
            long_dim = e_dim
        self.over_arch = MLP(long_dim + 2 * e_dim, c["mlp_dims"], out_dim=1, dropout=c["dropout"])

    @property
    def sequences(self) -> tuple[str, ...]:
        """The samples' sequences this model reads: short always (DIN or DIEN), then the long-term branch's own
        (``hard`` for hard search, ``long`` for soft search and the whole-sequence baselines)."""
        if self.gsu is not None:
            return ("short", "long" if self.gsu.mode == "soft" else "hard")
        return ("short",) if self.spec.long_branch == "none" else ("short", "long")

    @property
    def input_columns(self) -> tuple[str, ...]:
        """Columns of the samples table ``forward`` reads (a reader need not load the others): item and
        category ids of each sequence, and the time-gap buckets only where the ESU embeds them."""
        timed = self.spec.with_time
        return ("item_id", "category_id",
                *(f"{s}_{f}" for s in self.sequences
                  for f in ("items", "cats", "gaps") if f != "gaps" or (timed and s != "short")))

    def forward(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Args:
            batch: the samples-table columns as tensors (:mod:`sim.samples.contract`): ``item_id``,
                ``category_id`` (B), ``short_*`` (B X S), ``hard_*`` (B X K), ``long_*`` (B X L);
                a model reads only the sequences it uses.

        Returns:
            dict with
            ``logit`` B, the main (ESU / over-arch) CTR logit;
            ``short_attention`` B X S, DIN weights of the short branch (DIEN: the AUGRU's a_t);
            ``dien_aux_loss`` scalar, DIEN's next-behavior auxiliary loss (dien);
            ``gsu_logit`` B, soft-search aux CTR logit (soft models only);
            ``gsu_scores`` B X L, ``gsu_index`` B X K and ``gsu_mask`` B X K (GSU models: positions
            kept in the searched sequence, ``long_*`` for soft search, ``hard_*`` for hard search);
            ``embedding_sq`` scalar, the squared norm of the looked-up embeddings per sample (only
            with ``embedding_l2`` > 0);
            ``esu_attention`` B X H X K (ESU models); ``long_attention`` B X L (din_long);
            ``memory_read`` B X slots and ``miu_read`` B X slots, the target's attention over the
            memory slots and the MIU states, ``memory_usage`` B X slots, each slot's share of the
            write mass, ``mimn_util_loss`` scalar, the utilisation regulariser (mimn).
        """
        out: dict[str, Tensor] = {}
        emb = self.embedding
        target = emb.items_and_cats(batch["item_id"], batch["category_id"])
        short = _sequence(batch, "short")
        e_short = emb.behaviors(short)
        if self.dien is not None:
            u_short, out["short_attention"], out["dien_aux_loss"] = self.dien(target, e_short, short.mask)
        else:
            assert self.short_attention is not None
            u_short, out["short_attention"] = self.short_attention(target, e_short, short.mask)
        features = [u_short, target]
        looked_up = [target, e_short]
        branch = self.spec.long_branch
        if self.gsu is not None:
            source = _sequence(batch, "long" if self.gsu.mode == "soft" else "hard")
            found = self.gsu(emb, source, batch["category_id"], target)
            out["gsu_index"], out["gsu_mask"] = found.index, found.mask
            looked_up.append(found.embeddings)
            if found.scores is not None:
                out["gsu_scores"] = found.scores
            if found.aux_logit is not None:
                out["gsu_logit"] = found.aux_logit
            if self.esu is not None:
                u_long, out["esu_attention"] = self.esu(emb, found, target)
            else:
                u_long = masked_mean(found.embeddings, found.mask)
            features.insert(0, u_long)
        elif branch != "none":
            long = _sequence(batch, "long")
            e_long = emb.behaviors(long)
            looked_up.append(e_long)
            if branch == "avgpool":
                u_long = masked_mean(e_long, long.mask)
            elif branch == "mimn":
                assert self.memory is not None
                u_long, extra = self.memory(target, e_long, long.mask)
                out.update(extra)
            else:
                assert self.long_attention is not None
                u_long, out["long_attention"] = self.long_attention(target, e_long, long.mask)
            features.insert(0, u_long)
        out["logit"] = self.over_arch(torch.cat(features, dim=-1)).squeeze(-1)
        if self.embedding_l2 > 0:
            out["embedding_sq"] = sum(e.pow(2).sum() for e in looked_up) / max(1, target.shape[0])
        return out

    def loss(self, outputs: Mapping[str, Tensor], labels: Tensor) -> Tensor:
        """Equation (5): alpha * BCE(gsu_logit) + beta * BCE(logit), plus ``embedding_l2`` times the
        squared norm of the embeddings the batch looked up (per sample), plus the baselines' own terms:
        ``dien_aux_weight`` * DIEN's auxiliary loss, ``mimn_util_reg`` * MIMN's utilisation regulariser.

        Args:
            outputs: what ``forward`` returned.
            labels: B clicks, 0/1 (int or float).

        Returns:
            Scalar loss (mean over the batch).
        """
        y = labels.to(outputs["logit"].dtype)
        total = self.esu_beta * F.binary_cross_entropy_with_logits(outputs["logit"], y)
        # Hard search and the non-search baselines have no GSU term at all, not a zero-weighted one.
        if self.gsu_alpha > 0:
            total = total + self.gsu_alpha * F.binary_cross_entropy_with_logits(
                outputs["gsu_logit"], y)
        if self.embedding_l2 > 0:
            total = total + self.embedding_l2 * outputs["embedding_sq"]
        if self.dien_aux_weight > 0:
            total = total + self.dien_aux_weight * outputs["dien_aux_loss"]
        if self.mimn_util_reg > 0:
            total = total + self.mimn_util_reg * outputs["mimn_util_loss"]
        return total

    def attention_weights(self, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Attention weights of every attention the model has (for tests and analysis).

        Returns:
            subset of ``short_attention`` B X S, ``esu_attention`` B X H X K,
            ``long_attention`` B X L, ``memory_read`` and ``miu_read`` B X slots.
        """
        keys = ("short_attention", "esu_attention", "long_attention", "memory_read", "miu_read")
        out = self.forward(batch)
        return {k: v for k, v in out.items() if k in keys}


# The paper's name for the full model; the baselines are the same class with other specs.
SIM = CTRModel
