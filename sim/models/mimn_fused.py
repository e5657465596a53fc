"""MIMN's memory write fused into one compiled pass over each row's behaviors: the ``fused``
implementation of ``sim.models.mimn.MIMN.write`` (``mimn_impl: fused``, the default; ``reference`` is
``MIMN._step`` in torch, stepped over the batch and differentiated by autograd).

Why: the reference writes a batch behavior by behavior, each step some 60 small torch operations
forward and more backward. At L = 1,000 that is ~10^5 operator calls per training step; profiled on
this CPU, their dispatch and autograd bookkeeping, not arithmetic, take the time (matrix products were
~15% of it). Scripting the step (TorchScript, now deprecated) cuts the per-call cost by ~1.5x only,
which is why the step is compiled instead.

What is fused: ``mimn_kernel.c`` (beside this file, with ``mimn_kernel_ops.h`` and
``mimn_kernel_backward.h``; compiled on first use with the system's C
compiler, ``-O3 -march=native``, into a per-user cache under the temp directory keyed by the source,
the flags, the compiler and the CPU, and loaded with ctypes) runs all of ``MIMN.write``: the input
projections (``controller_in``, ``miu_in``), the controller GRU, the heads, cosine addressing, usage
re-scaling, the erase/add write, the read and the top-k MIU update, for every behavior of a row,
oldest first; and its backward, the chain rule of each of those operations written out in reverse.

- Rows go 8 at a time into the 8 lanes of SIMD vectors (GCC vector extensions), longest rows first,
  so a block's rows walk about as many behaviors; a lane whose row has ended is masked (its state
  kept, its gradient passed through), so padding is never computed for a whole block.
- The forward saves, per block and step, the state before it and what the backward needs that costs
  most to compute (gates, head outputs, strengths, norms, softmax weights, chosen slots: ~480
  vectors of 8 lanes per step at the defaults, ~0.5 GB at B = 256, L = 1,000, reused from one
  forward to the next, against ~1.9 GB of autograd graph for the reference); the backward computes the
  rest again from it exactly as the forward did.
- Weight gradients are buffered per step and summed over 16 steps at a time in register tiles; the
  blocks are split between ``torch.get_num_threads()`` Python threads (ctypes releases the GIL), each
  with its own gradient buffers, summed at the end.

Why the results are the reference's: per row, the same operations on the same values in the same
order of behaviors, and a padded position changes nothing in either (the reference masks it, this one
never reads it). What differs is floating-point rounding only: sums and matrix products accumulate in
another order (with fused multiply-adds), and in float32 exp and tanh are polynomial approximations
(Cephes' expf; a Taylor series below |x| = 0.3) good to a few ulp, where torch uses SLEEF's (1 ulp);
float64 uses the C library's. So state, outputs, loss and gradients agree to float tolerance, not bit
for bit (``tests/test_mimn_fused.py`` checks them, in float64 to 1e-9, with padding, rows of
different lengths, an all-padding row, k = 2 and two threads). Where the reference leaves a choice to
``torch.topk``, equal read weights, the lower slot is taken. The MIU's GRU is computed for the k
chosen slots only (the reference computes it for all m and keeps k: the same values). Falling back to
the reference (logged once where the kernel cannot be built): tensors off the CPU, dtypes other than
float32 / float64, machines without a C compiler. Double backward is not supported.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

if TYPE_CHECKING:
    from sim.models.mimn import MIMN

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("mimn_kernel.c")
HEADERS = [SOURCE.with_name(n) for n in ("mimn_kernel_ops.h", "mimn_kernel_backward.h")]  # it includes them
FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=gnu11", "-fPIC", "-shared")
SUFFIX = {torch.float32: "_f32", torch.float64: "_f64"}
# The kernel's defines per type: (REAL, IREAL, SUFFIX, VEC_POLY); see mimn_kernel.c.
TYPES = (("float", "int32_t", "_f32", 1), ("double", "int64_t", "_f64", 0))
LANES = 8  # rows per SIMD block (V in mimn_kernel.c)
# The kernel's Weights, Grads and State structs, field by field (all pointers).
WEIGHTS = ("Wx", "bx", "Wch", "bch", "Whd", "bhd", "Wg", "Wm", "bm", "Wmh", "bmh", "M0",
           "WxT", "WchT", "WhdT", "WgT", "WmT", "WmhT")
GRADS = WEIGHTS[:12]
STATE = ("h", "r", "M", "g", "S", "wR", "wW")


class _Dims(ctypes.Structure):
    _fields_ = [(n, ctypes.c_int64) for n in ("E", "H", "m", "k")]


class _Rows(ctypes.Structure):
    _fields_ = [("off", ctypes.c_void_p), ("pos", ctypes.c_void_p), ("order", ctypes.c_void_p),
                ("boff", ctypes.c_void_p), ("rows", ctypes.c_int64), ("blk0", ctypes.c_int64), ("blk1", ctypes.c_int64)]


def _pointers(names: Sequence[str]) -> type[ctypes.Structure]:
    return type("Pointers", (ctypes.Structure,), {"_fields_": [(n, ctypes.c_void_p) for n in names]})


_Weights, _Grads, _State = _pointers(WEIGHTS), _pointers(GRADS), _pointers(STATE)


def _cache_dir() -> Path:
    return Path(os.environ.get("SIM_KERNEL_CACHE") or Path(tempfile.gettempdir()) / f"sim-kernels-{os.getuid()}")


def _cpu_id() -> str:
    """What -march=native depends on: the CPU's model and flags (Linux), else the platform."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return "\n".join(sorted({ln for ln in lines if ln.startswith(("model name", "flags"))}))
    except OSError:
        return platform.processor() + platform.machine()


def build(cache: Path | None = None) -> Path:
    """Compile ``mimn_kernel.c`` (float and double) into a shared library, unless already cached.

    Returns:
        The library's path. Raises ``RuntimeError`` (with the compiler's message) when it cannot.
    """
    cc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("cc")
    if cc is None:
        raise RuntimeError("no C compiler (gcc or $CC) on PATH")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    src = b"".join(f.read_bytes() for f in (SOURCE, *HEADERS))
    key = hashlib.sha256(b"\0".join([src, " ".join(FLAGS).encode(), version.encode(), _cpu_id().encode()]))
    out = (cache or _cache_dir()) / f"mimn_kernel_{key.hexdigest()[:20]}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        unit = Path(tmp) / "mimn_kernels.c"
        unit.write_text("".join(f'#define REAL {t}\n#define IREAL {i}\n#define SUFFIX {s}\n#define VEC_POLY {p}\n'
                                f'#include "{SOURCE}"\n#undef REAL\n#undef IREAL\n#undef SUFFIX\n#undef VEC_POLY\n'
                                for t, i, s, p in TYPES))
        lib = Path(tmp) / out.name
        proc = subprocess.run([cc, *FLAGS, "-o", str(lib), str(unit), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed on {SOURCE.name}:\n{proc.stderr[-2000:]}")
        os.replace(lib, out)  # atomic: concurrent builders (Horovod ranks) each publish a whole file
    return out


@functools.lru_cache(maxsize=None)
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None (logged once) where it cannot be built."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as e:
        log.warning("MIMN's fused kernel is unavailable, MIMN runs its reference write: %s", e)
        return None
    head = [ctypes.POINTER(_Dims), ctypes.POINTER(_Weights), ctypes.POINTER(_Rows), ctypes.c_void_p, ctypes.c_void_p,
            ctypes.POINTER(_State)]
    for suffix in SUFFIX.values():
        getattr(lib, f"mimn_forward{suffix}").argtypes = head
        getattr(lib, f"mimn_backward{suffix}").argtypes = [*head, ctypes.c_void_p, ctypes.POINTER(_Grads)]
        size = getattr(lib, f"mimn_saved_size{suffix}")
        size.argtypes, size.restype = [ctypes.POINTER(_Dims)], ctypes.c_int64
    return lib


def supported(behaviors: Tensor) -> bool:
    """Whether ``fused_write`` runs for these behaviors (else the reference does)."""
    return behaviors.device.type == "cpu" and behaviors.dtype in SUFFIX and kernel() is not None


@functools.lru_cache(maxsize=1)
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="mimn")


def _run(calls: list) -> None:
    """Run the kernel calls (one per thread's rows), in parallel when there are several."""
    if len(calls) == 1:
        codes = [calls[0]()]
    else:
        codes = list(_pool(len(calls)).map(lambda f: f(), calls))
    if any(codes):
        raise MemoryError("MIMN's fused kernel could not allocate its work space")


def _ranges(boff: Tensor, threads: int) -> list[tuple[int, int]]:
    """Contiguous block ranges, one per thread, of about equal numbers of steps (``boff``: cumulative)."""
    blocks = boff.numel() - 1
    threads = max(1, min(threads, blocks))
    if threads == 1:
        return [(0, blocks)]
    cuts = torch.searchsorted(boff, torch.linspace(0, int(boff[-1]), threads + 1)[1:-1].to(boff.dtype))
    edges = [0, *sorted({min(int(c), blocks) for c in cuts}), blocks]
    return [(lo, hi) for lo, hi in zip(edges, edges[1:]) if hi > lo]


def _ptr(t: Tensor | None) -> int | None:
    return t.data_ptr() if t is not None and t.numel() else None


class _Plan:
    """Which behaviors each row walks and how rows go into blocks of ``LANES`` lanes (longest first)."""

    def __init__(self, mask: Tensor, threads: int) -> None:
        lengths = mask.sum(dim=1).to(torch.int64)
        self.pos = mask.reshape(-1).nonzero().squeeze(1)  # row by row, positions ascending (newest first)
        self.off = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
        self.off[1:] = lengths.cumsum(0)
        self.order = torch.argsort(lengths, descending=True, stable=True)
        block_steps = lengths[self.order][::LANES]  # a block walks as far as its longest row
        self.boff = torch.zeros(block_steps.numel() + 1, dtype=torch.int64)
        self.boff[1:] = block_steps.cumsum(0)
        self.ranges = _ranges(self.boff, threads)
        self.rows = lengths.numel()

    def structs(self) -> list[_Rows]:
        return [_Rows(self.off.data_ptr(), _ptr(self.pos), _ptr(self.order), self.boff.data_ptr(), self.rows, lo, hi)
                for lo, hi in self.ranges]


class _Saved:
    """The saved steps of one forward (``tensor``), in a buffer reused by a later forward once this one's
    graph is gone: a fresh buffer of this size (~0.5 GB at B = 256, L = 1,000) costs the operating
    system a good part of the kernel's time to zero its pages. One free buffer is kept (training
    alternates two: a step's forward runs while the previous step's outputs are still referenced)."""

    _free: list[Tensor] = []
    _lock = threading.Lock()

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        numel = 1
        for n in shape:
            numel *= n
        with self._lock:
            fits = [i for i, t in enumerate(self._free) if t.dtype == dtype and t.numel() >= numel]
            self.base = self._free.pop(fits[0]) if fits else torch.empty(numel, dtype=dtype)
        self.tensor = self.base[:numel].view(shape)

    def __del__(self) -> None:
        with self._lock:
            if not self._free or self._free[0].numel() < self.base.numel():
                self._free[:] = [self.base]


class _FusedWrite(torch.autograd.Function):
    """(behaviors, parameters) -> the final state's 7 tensors (``STATE`` order); see the module docstring.

    The parameters (``PARAMS`` of the module)."""

    @staticmethod
    def forward(ctx, dims: tuple[int, int, int, int], plan: _Plan, save: bool, x: Tensor,
                *params: Tensor) -> tuple[Tensor, ...]:
        e, h, m, k = dims
        weights = _weights(params)  # held: the struct has only their addresses
        d = _Dims(*dims)
        per_step = getattr(kernel(), f"mimn_saved_size{SUFFIX[x.dtype]}")(ctypes.byref(d))
        holder = _Saved((int(plan.boff[-1]), per_step, LANES), x.dtype) if save else None
        saved = holder.tensor if holder else None
        outs = [x.new_empty(plan.rows, *s) for s in _shapes(dims)]
        state = _State(*(_ptr(o) for o in outs))
        fn = getattr(kernel(), f"mimn_forward{SUFFIX[x.dtype]}")
        w = _Weights(*(_ptr(t) for t in weights))
        _run([functools.partial(fn, ctypes.byref(d), ctypes.byref(w), ctypes.byref(r), _ptr(x), _ptr(saved),
                                ctypes.byref(state)) for r in plan.structs()])
        if save:
            ctx.dims, ctx.plan, ctx.holder = dims, plan, holder
            ctx.save_for_backward(x, *params)
        return tuple(outs)

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor | None) -> tuple[Tensor | None, ...]:
        x, *params = ctx.saved_tensors
        saved = ctx.holder.tensor
        plan, (e, h, m, k) = ctx.plan, ctx.dims
        gout = [g.contiguous() if g is not None else x.new_zeros(plan.rows, *s)
                for g, s in zip(grads, _shapes(ctx.dims))]
        dx = torch.zeros_like(x)
        # One gradient buffer per thread, each of the kernel's parameters (GRADS order) as it is stored.
        weights = _weights(params)  # held: the struct has only their addresses
        sizes = [t.numel() for t in weights[:len(GRADS)]]
        flat = x.new_zeros(len(plan.ranges), sum(sizes))
        gs = [_Grads(*(t.data_ptr() for t in row.split(sizes))) for row in flat]
        fn = getattr(kernel(), f"mimn_backward{SUFFIX[x.dtype]}")
        d, w = _Dims(*ctx.dims), _Weights(*(_ptr(t) for t in weights))
        state = _State(*(_ptr(g) for g in gout))
        _run([functools.partial(fn, ctypes.byref(d), ctypes.byref(w), ctypes.byref(r), _ptr(x), _ptr(saved),
                                ctypes.byref(state), _ptr(dx), ctypes.byref(g)) for r, g in zip(plan.structs(), gs)])
        gx, gbx, gwch, gbch, gwhd, gbhd, gwg, gm, gbm, gwmh, gbmh, gm0 = (
            t.view_as(w) for t, w in zip(flat.sum(0).split(sizes), weights))
        grads = (gx[:, :e], gbx, gx[:, e:], gwch, gbch, gwhd, gbhd, gwg, gm[:, :e], gbm, gm[:, e:], gwmh, gbmh, gm0)
        return (None, None, None, dx, *grads)


def _shapes(dims: tuple[int, int, int, int]) -> list[tuple[int, ...]]:
    """Per row, the shapes of the final state's tensors (``STATE`` order)."""
    e, h, m, _ = dims
    return [(h,), (e,), (m, e), (m,), (m, e), (m,), (m,)]


def _weights(params: Sequence[Tensor]) -> list[Tensor]:
    """``WEIGHTS`` from the parameters: as the kernel reads them forward, then transposed."""
    wci, bci, wcr, wch, bch, whd, bhd, wg, wmi, bmi, wms, wmh, bmh, m0 = (p.detach() for p in params)
    wx, wm = torch.cat([wci, wcr], 1), torch.cat([wmi, wms], 1)
    stored = [wx, bci, wch, bch, whd, bhd, wg, wm, bmi, wmh, bmh, m0]
    return [t.contiguous() for t in stored] + [t.t().contiguous() for t in (wx, wch, whd, wg, wm, wmh)]


def params_of(mimn: MIMN) -> tuple[Tensor, ...]:
    """The module's parameters the kernel reads, in ``_FusedWrite``'s order."""
    return (mimn.controller_in.weight, mimn.controller_in.bias, mimn.controller_read.weight,
            mimn.controller_hidden.weight, mimn.controller_hidden.bias, mimn.heads.weight, mimn.heads.bias,
            mimn.usage_weight.weight, mimn.miu_in.weight, mimn.miu_in.bias, mimn.miu_slot.weight,
            mimn.miu_hidden.weight, mimn.miu_hidden.bias, mimn.memory_init)


def fused_write(mimn: MIMN, behaviors: Tensor, mask: Tensor) -> tuple[Tensor, ...]:
    """``MIMN.write`` by the kernel (check ``supported`` first).

    Args:
        mimn: the module (its parameters and sizes).
        behaviors: B X L X E, newest first, padding at the end.
        mask: B X L bool, True at real behaviors.

    Returns:
        The final state's fields in ``MIMNState`` order (controller, read, memory, usage, miu,
        read_weights, write_weights).
    """
    params = params_of(mimn)
    x = behaviors.contiguous()
    save = torch.is_grad_enabled() and any(t.requires_grad for t in (x, *params))
    dims = (mimn.dim, mimn.controller_dim, mimn.slots, mimn.miu_topk)
    return _FusedWrite.apply(dims, _Plan(mask, torch.get_num_threads()), save, x, *params)
