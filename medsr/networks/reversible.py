"""Reversible coupling blocks and a memory-saving reversible sequence (dimension-agnostic: 2D or 3D).

A coupling block splits its input channels in two halves ``x = (x1, x2)`` and computes

    additive:  y1 = x1 + F(x2),                 y2 = x2 + G(y1)
    affine:    y1 = x1 * s(F(x2)) + t(F(x2)),   y2 = x2 * s(G(y1)) + t(G(y1))

with an exact inverse (``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)`` for the additive case). The
coupling is pure maths (:class:`AdditiveCoupling`, :class:`AffineCoupling`: ``forward`` and
``inverse``); the memory strategy lives in :class:`ReversibleSequence`, in the spirit of memcnn's
coupling / wrapper split and revlib's single ``ReversibleSequential``.

Memory saving (``ReversibleSequence(memory_efficient=True)``): ONE ``torch.autograd.Function``
runs the whole sequence. Its forward runs every block without building a graph and saves only the
final output; no per-block activations are stored, so activation memory does not grow with depth.
Its backward walks the blocks in reverse. Each coupling block is two "half-steps"
``a' = a (+) NN(b)``; for each half-step it recomputes ``NN(b)`` with grad enabled (under the
autocast state saved at forward), recovers the half-step's input ``a`` from its output by the
inverse, and backpropagates with ``torch.autograd.grad``. The recomputed ``NN(b)`` serves both the
inverse and the gradient, so the extra cost is one forward pass of the core (not two), and at
most one branch's graph is alive at a time.

Why it is safe where memcnn is not:

* the caller's input is never freed or modified in place (a ReLU right before the core saved that
  tensor for its own backward; memcnn frees its storage and breaks it);
* under ``torch.no_grad()`` / eval, or when nothing needs a gradient, the blocks simply run;
* autocast (bf16/fp16) is captured at forward and re-entered for the recomputation; the branches
  run in low precision while the coupling sums stay in float32, so inversion stays accurate;
* every trainable parameter is an explicit input of the Function and receives its gradient as a
  return value of ``backward``, so DDP's per-parameter hooks fire, gradient accumulation adds to
  ``.grad`` as usual, ``torch.autograd.grad(loss, params)`` works, and frozen parameters
  (``requires_grad=False``) are skipped;
* no batch norm inside blocks (recomputation would update its running statistics twice):
  asking for it raises ``ValueError``.

Branches must be deterministic functions of their input (no dropout, no batch norm): the
backward pass recomputes them.

Double backward (``create_graph=True``) through the memory-saving path is not supported; use
``memory_efficient=False`` for that (the same blocks through plain autograd).

Building a core (for the 3D generators here and the 2D RevGAN)::

    from medsr.networks.reversible import make_core
    core = make_core(channels=64, depth=6, spatial_dims=2, norm="instance",
                     padding_mode="reflect", memory_efficient=True, coupling="additive")
    y = core(h)             # (B, 64, H, W) -> (B, 64, H, W)
    h_back = core.inverse(y)

Each block's branches are ``conv 3^d (C/2 -> C/2), norm, ReLU, conv 3^d (C/2 -> C/2)`` with the
last convolution zero-initialised, so a fresh core is exactly the identity.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from medsr.networks import layers

COUPLINGS: tuple[str, ...] = ("additive", "affine")


# --------------------------------------------------------------------------------------------
# Coupling blocks: pure forward / inverse maths
# --------------------------------------------------------------------------------------------
class CouplingBlock(nn.Module):
    """Base coupling block over two channel halves; subclasses define ``combine``/``uncombine``.

    Args:
        f: branch NN1, maps (B, C/2, *S) -> (B, C/2 * m, *S) (m = 1 additive, 2 affine).
        g: branch NN2, same shapes.
    """

    def __init__(self, f: nn.Module, g: nn.Module) -> None:
        super().__init__()
        for branch in (f, g):
            if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in branch.modules()):
                raise ValueError(
                    "batch norm is not allowed inside a reversible block: recomputation in the "
                    "backward pass would update its running statistics twice; use 'instance' or 'none'"
                )
        self.f = f
        self.g = g

    # a' = a (+) out ; a = a' (-) out
    def combine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def uncombine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def half_steps(self) -> list[tuple[nn.Module, int]]:
        """The forward half-steps ``(branch, target half)``: half ``t`` is updated from half ``1-t``."""
        return [(self.f, 0), (self.g, 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S)."""
        h = list(_split(x))
        for branch, t in self.half_steps():
            h[t] = self.combine(h[t], branch(h[1 - t]))
        return torch.cat(h, dim=1)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S), the exact inverse of :meth:`forward`."""
        h = list(_split(y))
        for branch, t in reversed(self.half_steps()):
            h[t] = self.uncombine(h[t], branch(h[1 - t]))
        return torch.cat(h, dim=1)


class AdditiveCoupling(CouplingBlock):
    """``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)`` (RevNet / RevGAN)."""

    def combine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return a + out

    def uncombine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        return a - out


class AffineCoupling(CouplingBlock):
    """``y1 = x1 * exp(tanh(s)) + t`` with ``(s, t) = F(x2)`` split on channels; same for G.

    The log-scale is bounded by tanh so the inverse stays well conditioned; a zero branch output
    (zero-initialised last conv) gives scale 1 and shift 0, i.e. the identity.
    """

    @staticmethod
    def _scale_shift(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw, shift = out.chunk(2, dim=1)
        return torch.tanh(raw), shift

    def combine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        log_s, shift = self._scale_shift(out)
        return a * torch.exp(log_s) + shift

    def uncombine(self, a: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        log_s, shift = self._scale_shift(out)
        return (a - shift) * torch.exp(-log_s)


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    c = x.shape[1]
    if c % 2:
        raise ValueError(f"a reversible block splits channels in half; got an odd channel count {c}")
    return x[:, : c // 2], x[:, c // 2 :]


# --------------------------------------------------------------------------------------------
# The memory-saving autograd Function over a whole sequence of half-steps
# --------------------------------------------------------------------------------------------
# One half-step: (block, branch, target half, +1 forward / -1 inverse direction)
_Step = tuple[CouplingBlock, nn.Module, int, int]


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype | None]:
    """The autocast state for ``device_type`` now, to re-enter it during recomputation."""
    try:  # torch >= 2.4
        return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # older torch: separate cpu / gpu accessors
        if device_type == "cpu":
            return device_type, torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        if device_type == "cuda":
            return device_type, torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
        return device_type, False, None
    except RuntimeError:  # a device without autocast (e.g. "meta" for shape-only runs)
        return device_type, False, None


def _autocast(state: tuple[str, bool, torch.dtype | None]):
    device_type, enabled, dtype = state
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype, enabled=True)


def _apply_step(step: _Step, h: list[torch.Tensor]) -> None:
    block, branch, t, sign = step
    out = branch(h[1 - t])
    h[t] = block.combine(h[t], out) if sign > 0 else block.uncombine(h[t], out)


def _step_backward(
    step: _Step,
    h: list[torch.Tensor],
    g: list[torch.Tensor],
    grads: dict[int, torch.Tensor],
    amp: tuple[str, bool, torch.dtype | None],
    need_input_grad: bool,
) -> None:
    """Undo one half-step in place of ``h`` (outputs -> inputs) and backprop ``g`` through it."""
    block, branch, t, sign = step
    s = 1 - t
    params = [p for p in branch.parameters() if p.requires_grad]
    b = h[s].detach().requires_grad_(need_input_grad)
    with torch.enable_grad(), _autocast(amp):
        out = branch(b)
    with torch.no_grad():
        # The half-step's input, rebuilt from its output by the inverse, reusing ``out``.
        a_in = block.uncombine(h[t], out) if sign > 0 else block.combine(h[t], out)
    a_leaf = a_in.detach().requires_grad_(need_input_grad)
    with torch.enable_grad(), _autocast(amp):
        a_out = block.combine(a_leaf, out) if sign > 0 else block.uncombine(a_leaf, out)
    wrt = ([a_leaf, b] if need_input_grad else []) + params
    if wrt:
        res = torch.autograd.grad(a_out, wrt, g[t], allow_unused=True)
        if need_input_grad:
            ga, gb, res = res[0], res[1], res[2:]
            g[t] = ga if ga is not None else torch.zeros_like(a_leaf)
            if gb is not None:
                g[s] = g[s] + gb
        for p, gp in zip(params, res):
            if gp is not None:
                key = id(p)
                grads[key] = gp if key not in grads else grads[key] + gp
    h[t] = a_in


class _ReversibleFunction(torch.autograd.Function):
    """Runs ``steps`` storing only the final output; rebuilds inputs by inversion in backward.

    ``apply(x, steps, amp, *params)``: ``params`` are every trainable parameter of the steps,
    passed explicitly so their gradients are returned by :meth:`backward` (DDP hooks, accumulation
    and ``torch.autograd.grad`` then behave as with plain autograd).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, steps: list[_Step], amp, *params: torch.Tensor) -> torch.Tensor:
        # Autograd runs this under no_grad: no graph, no per-block storage.
        h = list(_split(x))
        for step in steps:
            _apply_step(step, h)
        y = torch.cat(h, dim=1)
        ctx.steps = steps
        ctx.amp = amp
        ctx.params = params
        # The output is the only saved tensor; saving it through save_for_backward keeps
        # autograd's version check, so an in-place edit of y by the caller raises, not corrupts.
        ctx.save_for_backward(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (y,) = ctx.saved_tensors
        h = [t.detach() for t in _split(y)]
        g = list(_split(gy))
        grads: dict[int, torch.Tensor] = {}
        steps = ctx.steps
        need_x = ctx.needs_input_grad[0]
        for i in range(len(steps) - 1, -1, -1):
            # The very first half-step only needs input grads when x itself wants one.
            _step_backward(steps[i], h, g, grads, ctx.amp, need_input_grad=(i > 0 or need_x))
        gx = torch.cat(g, dim=1) if need_x else None
        return (gx, None, None, *(grads.get(id(p)) for p in ctx.params))


# --------------------------------------------------------------------------------------------
# The sequence module
# --------------------------------------------------------------------------------------------
class ReversibleSequence(nn.Module):
    """A sequence of coupling blocks with ``forward`` and exact ``inverse``.

    Args:
        blocks: coupling blocks (may be empty: then the sequence is the identity).
        memory_efficient: True -> one custom autograd Function (activation memory constant in
            depth); False -> the same blocks through plain autograd (tests, debugging, double
            backward).

    Shapes: (B, C, *S) -> (B, C, *S) for any number of spatial dims; C must be even.
    """

    def __init__(self, blocks: Sequence[CouplingBlock], memory_efficient: bool = True) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.memory_efficient = bool(memory_efficient)

    def __len__(self) -> int:
        return len(self.blocks)

    def _steps(self, inverse: bool) -> list[_Step]:
        if not inverse:
            return [(b, br, t, 1) for b in self.blocks for br, t in b.half_steps()]
        return [(b, br, t, -1) for b in reversed(self.blocks) for br, t in reversed(b.half_steps())]

    def _run(self, x: torch.Tensor, inverse: bool) -> torch.Tensor:
        if len(self.blocks) == 0:
            return x
        steps = self._steps(inverse)
        amp = _autocast_state(x.device.type)
        if amp[1] and x.dtype in (torch.float16, torch.bfloat16):
            # Under autocast the branches run in low precision, but the coupling sums (the
            # residual stream) stay in float32: a bf16 sum y1 = x1 + F(x2) would round away x1's
            # low bits, so inverting it (x1 = y1 - F(x2)) could not rebuild x1 and the error would
            # grow with depth. Only under autocast: a model cast to bf16 keeps its own dtype.
            x = x.float()
        params = [p for p in self.parameters() if p.requires_grad]
        if self.memory_efficient and torch.is_grad_enabled() and (x.requires_grad or params):
            return _ReversibleFunction.apply(x, steps, amp, *params)
        # Plain path: no_grad / eval / nothing to differentiate, or memory_efficient=False.
        h = list(_split(x))
        for step in steps:
            _apply_step(step, h)
        return torch.cat(h, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S)."""
        return self._run(x, inverse=False)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """(B, C, *S) -> (B, C, *S): the exact inverse, with the same memory saving."""
        return self._run(y, inverse=True)


# --------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------
def make_branch(
    channels: int,
    spatial_dims: int = 3,
    norm: str = "none",
    padding_mode: str = "reflect",
    out_multiplier: int = 1,
    hidden: int | None = None,
) -> nn.Sequential:
    """NN1 / NN2: conv 3^d, norm, ReLU, conv 3^d (zero-initialised), volume preserving.

    Args:
        channels: input channels (half the core width).
        spatial_dims: 2 or 3.
        norm: ``"none"`` or ``"instance"`` (``"batch"`` raises ValueError).
        padding_mode: ``"reflect"``, ``"replicate"`` (or ``"zeros"``).
        out_multiplier: 1 for additive coupling, 2 for affine (scale and shift).
        hidden: hidden channels (default ``channels``).

    Returns:
        Module (B, channels, *S) -> (B, channels * out_multiplier, *S).
    """
    if norm == "batch":
        raise ValueError(
            "batch norm is not allowed inside a reversible block: recomputation in the backward "
            "pass would update its running statistics twice; use 'instance' or 'none'"
        )
    hidden = channels if hidden is None else hidden
    return nn.Sequential(
        layers.conv(spatial_dims, channels, hidden, 3, padding_mode=padding_mode),
        layers.norm(norm, spatial_dims, hidden),
        nn.ReLU(inplace=True),
        layers.zero_init(layers.conv(spatial_dims, hidden, channels * out_multiplier, 3, padding_mode=padding_mode)),
    )


def make_block(
    channels: int,
    spatial_dims: int = 3,
    norm: str = "none",
    padding_mode: str = "reflect",
    coupling: str = "additive",
) -> CouplingBlock:
    """One coupling block on ``channels`` channels (even), starting as the identity."""
    if channels % 2 or channels < 2:
        raise ValueError(f"a reversible block needs an even channel count >= 2, got {channels}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling must be one of {COUPLINGS}, got {coupling!r}")
    half = channels // 2
    mult = 2 if coupling == "affine" else 1
    f = make_branch(half, spatial_dims, norm, padding_mode, mult)
    g = make_branch(half, spatial_dims, norm, padding_mode, mult)
    cls = AffineCoupling if coupling == "affine" else AdditiveCoupling
    block = cls(f, g)
    layers.init_weights(block)
    return block


def make_core(
    channels: int,
    depth: int,
    spatial_dims: int = 3,
    norm: str = "none",
    padding_mode: str = "reflect",
    memory_efficient: bool = True,
    coupling: str = "additive",
) -> ReversibleSequence:
    """A reversible core of ``depth`` coupling blocks on ``channels`` channels (2D or 3D).

    Returns:
        A :class:`ReversibleSequence` (B, channels, *S) -> (B, channels, *S), with ``.inverse``;
        the identity at initialisation (and for ``depth=0``).
    """
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth > 0 and (channels % 2 or channels < 2):
        raise ValueError(f"the reversible core splits channels in half: width must be even, got {channels}")
    blocks = [make_block(channels, spatial_dims, norm, padding_mode, coupling) for _ in range(depth)]
    return ReversibleSequence(blocks, memory_efficient=memory_efficient)
