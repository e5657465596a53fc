"""MIMN's fused write (sim.models.mimn_fused) against its reference (MIMN._step in torch): the same final
state, model outputs, loss and gradients to float tolerance, with padding, rows of different lengths,
an all-padding row, more rows than one SIMD block, k > 1 MIU slots and rows split between threads; the
config key that selects it."""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pydantic  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from sim.models import build_model  # noqa: E402
from sim.models import mimn_fused  # noqa: E402
from sim.models.mimn import MIMN, MIMNState  # noqa: E402
from test_models import SMALL, make_batch  # noqa: E402

torch.set_num_threads(2)

# 11 rows: two SIMD blocks (the second partial), an empty row, a full one, rows of 1 and 2 behaviors.
LENGTHS = [9, 0, 4, 1, 9, 7, 2, 5, 3, 8, 6]
TOL = {torch.float64: dict(rtol=1e-9, atol=1e-11), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _inputs(dtype: torch.dtype, lengths: list[int], width: int = 12, dim: int = 8,
            seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Behaviors newest first with padding (random values, so a padded step that leaked would show)."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    x = torch.randn(len(lengths), width, dim, generator=g, dtype=dtype)
    target = torch.randn(len(lengths), dim, generator=g, dtype=dtype)
    return x, mask, target


def _run(mimn: MIMN, impl: str, x: Tensor, mask: Tensor, target: Tensor) -> dict:
    """The final state, the module's outputs, a loss over all of them and every gradient, by ``impl``."""
    mimn.impl = impl
    mimn.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    state = mimn.write(x, mask)
    u, extra = mimn(target, x, mask)
    g = torch.Generator().manual_seed(1)
    loss = (u ** 2).sum() + 3 * extra["mimn_util_loss"]
    # Every field of the state enters the loss too, so each of their gradients is checked.
    loss = loss + sum((f * torch.randn(f.shape, generator=g, dtype=f.dtype)).sum() for f in state)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in mimn.named_parameters()}
    return {"state": state, "u": u.detach(), "extra": {k: v.detach() for k, v in extra.items()},
            "loss": loss.detach(), "x_grad": x.grad.clone(), "grads": grads}


def _assert_same(ref: dict, fused: dict, dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    for name, a, b in zip(MIMNState._fields, ref["state"], fused["state"]):
        torch.testing.assert_close(b.detach(), a.detach(), **tol, msg=lambda m: f"state.{name}: {m}")
    torch.testing.assert_close(fused["u"], ref["u"], **tol)
    for k in ref["extra"]:
        torch.testing.assert_close(fused["extra"][k], ref["extra"][k], **tol, msg=lambda m: f"{k}: {m}")
    torch.testing.assert_close(fused["loss"], ref["loss"], **tol)
    torch.testing.assert_close(fused["x_grad"], ref["x_grad"], **tol)
    for n, g in ref["grads"].items():
        torch.testing.assert_close(fused["grads"][n], g, **tol, msg=lambda m: f"grad {n}: {m}")


def test_the_kernel_builds_here() -> None:
    """CI has a C compiler: the fused path must really run, not fall back to the reference."""
    assert mimn_fused.kernel() is not None
    assert mimn_fused.supported(torch.zeros(1)) and mimn_fused.supported(torch.zeros(1, dtype=torch.float64))
    assert not mimn_fused.supported(torch.zeros(1, dtype=torch.bfloat16))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("topk", [1, 2])
def test_fused_write_matches_the_reference(dtype: torch.dtype, topk: int) -> None:
    torch.manual_seed(0)
    mimn = MIMN(dim=8, slots=4, controller_dim=12, miu_topk=topk, attention_hidden=(8,)).to(dtype)
    x, mask, target = _inputs(dtype, LENGTHS)
    ref, fused = _run(mimn, "reference", x, mask, target), _run(mimn, "fused", x, mask, target)
    _assert_same(ref, fused, dtype)
    # The empty row kept the initial memory and an empty MIU; its behaviors got no gradient.
    assert torch.equal(fused["state"].memory[1], mimn.memory_init.detach())
    assert not fused["state"].miu[1].any() and not fused["x_grad"][1].any()
    assert not fused["x_grad"][~mask].any()  # nor did any padded position
    assert fused["grads"]["usage_weight.weight"].abs().sum() > 0


def test_fused_write_ignores_padding_and_the_row_split() -> None:
    """More padding columns change nothing; nor does splitting the rows between 1 or 2 threads."""
    torch.manual_seed(0)
    mimn = MIMN(dim=8, slots=4, controller_dim=12, attention_hidden=(8,))
    x, mask, target = _inputs(torch.float32, LENGTHS)
    with torch.no_grad():
        state = mimn.write(x, mask)
        wider = mimn.write(torch.cat([x, torch.randn(len(LENGTHS), 5, 8)], 1),
                           torch.cat([mask, torch.zeros(len(LENGTHS), 5, dtype=torch.bool)], 1))
    for name, a, b in zip(MIMNState._fields, state, wider):
        assert torch.equal(a, b), name
    runs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        runs.append(_run(mimn, "fused", x, mask, target))
    torch.set_num_threads(2)
    _assert_same(runs[0], runs[1], torch.float32)


def test_fused_write_matches_the_reference_over_a_long_sequence() -> None:
    """200 behaviors: the difference in rounding does not grow into a different result."""
    torch.manual_seed(0)
    mimn = MIMN(dim=8, slots=4, controller_dim=12, attention_hidden=(8,))
    x, mask, target = _inputs(torch.float32, [200, 80, 199], width=200)
    ref, fused = _run(mimn, "reference", x, mask, target), _run(mimn, "fused", x, mask, target)
    _assert_same(ref, fused, torch.float32)


def test_mimn_impl_config_key_selects_the_write() -> None:
    batch = make_batch(b=12, long=20, seed=5)
    torch.manual_seed(0)
    fused = build_model("mimn", SMALL)
    reference = build_model("mimn", {**SMALL, "mimn_impl": "reference"})
    assert fused.long_term.memory.impl == "fused" and reference.long_term.memory.impl == "reference"
    # Same parameters, same state-dict keys: a checkpoint of one loads into the other.
    reference.load_state_dict(fused.state_dict())
    out_f, out_r = fused(batch), reference(batch)
    torch.testing.assert_close(out_f["logit"], out_r["logit"], rtol=2e-4, atol=2e-5)
    fused.loss(out_f, batch["label"]).backward()
    reference.loss(out_r, batch["label"]).backward()
    for (n, a), (_, b) in zip(fused.named_parameters(), reference.named_parameters()):
        if a.grad is not None or b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, rtol=2e-4, atol=2e-5, msg=lambda m: f"{n}: {m}")
    with pytest.raises(pydantic.ValidationError, match="mimn_impl"):
        build_model("mimn", {**SMALL, "mimn_impl": "fast"})
