"""Precision, memory layout and compilation options of the trainer (``trainer.amp``,
``trainer.channels_last``, ``trainer.compile``), all off by default where they change
numerics.

* ``amp``: ``null`` (fp32), ``bf16`` (autocast to bfloat16 on CUDA or CPU; no scaler
  needed) or ``fp16`` (CUDA only, with ``torch.amp.GradScaler``). The forward pass runs
  under autocast; predictions are cast back to float32 before losses and metrics, so
  every loss, every metric and every balancer's arithmetic is fp32. Under fp16 the
  balancer back-propagates through ``BalancerContext.backward`` (the scaled loss);
  gradient balancers (MGDA) solve
  their min-norm problem on unscaled per-task gradients (the solution does not depend
  on a common scale) and scale only the final backward, so they stay correct.
* ``channels_last``: the model and 4-D inputs in ``torch.channels_last`` memory format
  (faster convolutions on recent GPUs; the same outputs within float tolerance).
* ``compile``: ``false``, ``true`` (``torch.compile`` with the default inductor backend)
  or a backend name (e.g. ``aot_eager``). A model that cannot be compiled falls back to
  eager mode with one message; an architecture whose forward depends on data (e.g.
  AdaShare's sampled policy) says why through ``compile_blocker`` and runs eager.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Dict, Optional

import torch

AMP_MODES = (None, "bf16", "fp16")


class SpeedOptions:
    def __init__(self, amp: Optional[str] = None, channels_last: bool = False, compile=False,
                 device: torch.device = torch.device("cpu")):
        amp = None if amp in (None, "", "none", "null", False) else str(amp)
        if amp not in AMP_MODES:
            raise ValueError(f"trainer.amp must be null, bf16 or fp16 (got {amp!r})")
        if amp == "fp16" and device.type != "cuda":
            raise ValueError("trainer.amp=fp16 needs CUDA (a gradient scaler on GPU); on CPU use trainer.amp=bf16")
        self.amp, self.channels_last, self.device = amp, bool(channels_last), device
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
        self.backend = None if compile in (False, None, "", "false") else ("inductor" if compile is True else str(compile))
        self._compiled: Dict[int, object] = {}
        self.messages = []

    # ------------------------------------------------------------- per step
    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def layout(self, x):
        if self.channels_last and isinstance(x, torch.Tensor) and x.dim() == 4:  # 4-D tensors only (not graphs)
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def fp32(self, preds: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        if self.dtype is None:
            return preds
        return {k: v.float() if v.is_floating_point() else v for k, v in preds.items()}

    def step(self, optimizer, params, grad_clip: Optional[float]) -> None:
        """The optimizer step (through the grad scaler under fp16), after clipping the
        gradient norm of ``params`` (what the optimizer updates) to ``grad_clip``."""
        if self.scaler is not None:
            if grad_clip:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            self.scaler.step(optimizer)
            self.scaler.update()
            return
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()

    # ------------------------------------------------------------- compile
    def say(self, msg: str) -> None:
        if msg not in self.messages:
            self.messages.append(msg)
            print(f"[mtlbench] {msg}", file=sys.stderr, flush=True)

    def compiled(self, net, owner=None):
        """``net`` compiled (cached per module), or ``net`` itself when compile is off or
        impossible for this architecture."""
        if self.backend is None:
            return net
        owner = owner if owner is not None else net
        blocker = getattr(owner, "compile_blocker", None)
        if blocker:
            self.say(f"trainer.compile is off for {type(owner).__name__}: {blocker}")
            return net
        key = id(net)
        if key not in self._compiled:
            self._compiled[key] = _CompiledOrEager(net, self.backend, self.say)
        return self._compiled[key]


class _CompiledOrEager:
    """Calls the compiled module; if compiling fails (no C++ toolchain, an unsupported
    op...), says so once and runs the eager module from then on."""

    def __init__(self, module, backend: str, say):
        self.module, self.backend, self.say = module, backend, say
        try:
            self.fn = torch.compile(module, backend=backend)
        except Exception as exc:  # e.g. an unknown backend
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        self.say(f"torch.compile (backend {self.backend}) failed, running eager: {type(exc).__name__}: {first}")
        self.fn = None

    def __call__(self, *args, **kwargs):
        if self.fn is not None:
            try:
                return self.fn(*args, **kwargs)
            except Exception as exc:
                self._fail(exc)
        return self.module(*args, **kwargs)
