"""Executed work, counted op by op and split by phase (VAE encode, UNet, ControlNet, VAE decode, our nodes, ...).

:class:`WorkCounter` is a TorchDispatchMode: every aten op that runs while it is active is seen once, after
autograd and composite decomposition, on any device (``meta`` included, where nothing is computed), and counted into
the phase on top of its stack:

- ``flop``: floating-point operations of the ops that carry a model's arithmetic, by ``torch.utils.flop_counter``'s
  own formulas (matrix products, convolutions, scaled-dot-product attention; 2 per multiply-add). These are the FLOPs
  a card's TFLOPS rating is about. ``torch.utils.flop_counter`` has no formula for the CPU attention kernel
  (``_scaled_dot_product_flash_attention_for_cpu``); it is counted with the same formula as the CUDA kernels.
- ``elems``: for every other op that computes something (norms, activations, adds, casts, copies, our image math),
  the elements it writes: memory-bound work;
- ``bytes``: the bytes of every counted op's tensor inputs and outputs (weights included): the memory traffic of
  unfused kernels;
- ``ops``: kernels launched (one per counted op), each one Python dispatch on the host.

With ``record=True`` every counted op's (flop, bytes) is also kept per phase, for a roofline time per op
(bench/cost.py).

Composite ops are counted as the ops they decompose into (under ``inference_mode``, where ComfyUI runs every node,
``conv2d``, ``linear``, ``matmul``, ``einsum`` and SDPA reach the mode undecomposed). Views, reshapes and allocations
compute nothing and are not counted. Ops that run in other threads (the view-set
loader's decode pool) are not seen: the mode stack is per thread.
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import wraps
from inspect import iscoroutinefunction

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

aten = torch.ops.aten
FORMULAS = dict(flop_registry)
FORMULAS[aten._scaled_dot_product_flash_attention_for_cpu] = flop_registry[aten._scaled_dot_product_flash_attention]
FREE = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided, aten.detach,
        aten.alias, aten.lift_fresh, aten._local_scalar_dense, aten.resize_, aten.set_, aten.sym_size,
        aten.sym_stride, aten.sym_numel, aten.sym_storage_offset, aten.is_same_size, aten._nested_tensor_from_mask,
        aten.record_stream, aten.is_pinned, aten._has_compatible_shallow_copy_type}


@dataclass
class Work:
    flop: int = 0
    elems: int = 0
    bytes: int = 0
    ops: int = 0

    def __iadd__(self, other: Work) -> Work:
        self.flop += other.flop
        self.elems += other.elems
        self.bytes += other.bytes
        self.ops += other.ops
        return self

    def scaled(self, k: float) -> Work:
        return Work(round(self.flop * k), round(self.elems * k), round(self.bytes * k), round(self.ops * k))

    def as_dict(self) -> dict:
        return asdict(self)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class WorkCounter(TorchDispatchMode):
    """Counts :class:`Work` by phase while active (``with counter:``); phases nest (:meth:`phase`, :meth:`wrap`)."""

    def __init__(self, phase: str = "other", record: bool = False):
        super().__init__()
        self.by_phase: dict[str, Work] = defaultdict(Work)
        self.ops: dict[str, list[tuple[int, int]]] | None = defaultdict(list) if record else None
        self._stack = [phase]

    @contextmanager
    def phase(self, name: str):
        self._stack.append(name)
        try:
            yield
        finally:
            self._stack.pop()

    def wrap(self, name: str, fn):
        """``fn`` (plain or async) counted into phase ``name``."""
        if iscoroutinefunction(fn):
            @wraps(fn)
            async def counted_async(*args, **kwargs):
                with self.phase(name):
                    return await fn(*args, **kwargs)
            return counted_async

        @wraps(fn)
        def counted(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)
        return counted

    def total(self) -> Work:
        out = Work()
        for w in self.by_phase.values():
            out += w
        return out

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        packet = func.overloadpacket
        if packet not in FORMULAS and func is not torch.ops.prim.device.default:
            # a composite op (under inference_mode conv2d, linear, matmul, einsum and SDPA arrive undecomposed):
            # count the ops it is made of, as torch.utils.flop_counter does
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        if packet in FREE or func.is_view:
            return out
        w = self.by_phase[self._stack[-1]]
        outs = _tensors(out)
        flop = int(FORMULAS[packet](*args, **kwargs, out_val=out)) if packet in FORMULAS else 0
        moved = sum(t.numel() * t.element_size() for t in (*_tensors((args, kwargs)), *outs))
        w.flop += flop
        w.elems += 0 if flop else sum(t.numel() for t in outs)
        w.bytes += moved
        w.ops += 1
        if self.ops is not None:
            self.ops[self._stack[-1]].append((flop, moved))
        return out
