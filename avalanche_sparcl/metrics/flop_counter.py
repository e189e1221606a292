"""Sparsity-aware training FLOPs of a model, from the shapes its layers actually see.

Framework-free: any training loop can attach a :class:`TrainingFlopCounter` to its model, switch
``counting`` on while it trains, and tell it the kept fraction of each weight and weight gradient.

Cost model (SparCL reference, "FLOPs model"; one multiply-add = 2 FLOPs):

- Convolution and Linear layers (the *matmul-like* FLOPs, what ``torch.utils.flop_counter``'s
  ``FlopCounterMode`` counts): per call, ``dense = 2 x output elements x multiply-adds per output``;
  forward = weight density x dense; input gradient = weight density x dense, only when the layer's
  input needs a gradient (never for the first layer); weight gradient = kept weight-gradient
  fraction x dense, only when the weight needs a gradient. The backward parts are counted when
  autograd actually reaches the layer's output, so a pass under ``no_grad`` costs its forward only.
  Bias additions are not matmul-like; FlopCounterMode ignores them too.
- Everything else the model does (normalisation, activations, pooling, residual additions, a
  cross-entropy loss on its output): counted dense, one FLOP per element of the largest tensor an
  op reads or writes; views, copies and allocations are free. The cost per sample is measured on a
  copy of the model (two samples, forward and backward) taken the first time an input shape and mode
  is seen with the current layers, and multiplied by the samples each pass processes, so training
  pays no per-step dispatch cost and a pass keeps the cost of the model it ran on (a head that grows
  later, a model replaced by a copy, change the cost of later passes only). The copy is measured
  after the pass, when weight gradients are settled or FLOPs read: measuring inside the pass would run
  the model's other hooks (a probe recording the layers it passes, say) on the copy.
- A weight is named as ``model.named_parameters()`` names its Parameter, so a weight shared by two
  layers reads one mask. A ``torch.compile`` wrapper is seen through: its original module
  (``_orig_mod``) is hooked and copied, since compiled code hides its operations from the
  measurement and the wrapper cannot be copied; the names stay the wrapper's, as the masks' are.
- Not counted: matmul-like operations outside Conv/Linear modules (e.g. a functional
  ``F.linear``), the optimizer step, and anything while ``counting`` is off (evaluation).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import flop_registry

COUNTED_LAYERS = (nn.Linear, nn.modules.conv._ConvNd)
CALIBRATION_SAMPLES = 2

# Ops that only move, copy or allocate data: no arithmetic.
_aten = torch.ops.aten
FREE_OPS = {
    _aten.clone,
    _aten.copy_,
    _aten._to_copy,
    _aten.detach,
    _aten.lift_fresh,
    _aten.lift_fresh_copy,
    _aten.ones_like,
    _aten.zeros_like,
    _aten.empty_like,
    _aten.full_like,
    _aten.fill_,
    _aten.zero_,
    _aten.new_zeros,
    _aten.new_ones,
    _aten.new_empty,
    _aten.new_empty_strided,
    _aten.cat,
    _aten.stack,
}


@dataclass
class FlopBreakdown:
    """Training FLOPs split by where they are spent."""

    forward: float = 0.0
    input_gradient: float = 0.0
    weight_gradient: float = 0.0
    other: float = 0.0

    @property
    def matmul(self) -> float:
        """Convolution and Linear FLOPs: what FlopCounterMode counts."""
        return self.forward + self.input_gradient + self.weight_gradient

    @property
    def total(self) -> float:
        return self.matmul + self.other

    def __sub__(self, earlier: FlopBreakdown) -> FlopBreakdown:
        return FlopBreakdown(
            self.forward - earlier.forward,
            self.input_gradient - earlier.input_gradient,
            self.weight_gradient - earlier.weight_gradient,
            self.other - earlier.other,
        )


class ElementwiseCostMode(TorchDispatchMode):
    """Counts the dense cost of every op that is neither matmul-like nor free (see module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in flop_registry or packet in FREE_OPS or func.is_view:
            return out
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if inputs:  # ops without tensor inputs create tensors: free
            outputs = [t for t in tree_leaves(out) if isinstance(t, Tensor)]
            self.flops += max(t.numel() for t in inputs + outputs)
        return out


def dense_multiply_adds_per_output(layer: nn.Module) -> int:
    """Multiply-adds behind one output element (Linear, convolution) or one input element (transposed)."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    kernel = math.prod(layer.kernel_size)
    if layer.transposed:
        return layer.out_channels // layer.groups * kernel
    return layer.in_channels // layer.groups * kernel


DENSE = (1, 1)


def original_module(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper runs (its ``_orig_mod``), else the model itself."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def counted_layers(model: nn.Module) -> dict[nn.Module, str]:
    """Conv and Linear layers -> their weight's name in ``model.named_parameters()`` (matched by identity,
    so layers sharing a weight share its name and mask); ``<layer name>.weight`` if it is no parameter."""
    parameter_names = {id(param): name for name, param in model.named_parameters()}
    return {
        module: parameter_names.get(id(module.weight), f"{name}.weight")
        for name, module in model.named_modules()
        if isinstance(module, COUNTED_LAYERS)
    }


class TrainingFlopCounter:
    """Counts the training FLOPs of one model with forward hooks that read shapes only.

    ``weight_kept`` maps a weight's parameter name to ``(kept entries, all entries)`` and is read at
    each forward; weight gradients wait in a pending tally until :meth:`settle_weight_gradients`
    tells which fraction of each was kept at that step.
    """

    def __init__(self, model: nn.Module):
        self.model: nn.Module | None = None
        self.counting = False
        self.weight_kept: dict[str, tuple[int, int]] = {}
        self._handles: list[Any] = []
        self._weight_names: dict[nn.Module, str] = {}
        self._multiply_adds: dict[nn.Module, int] = {}
        # (component, weight name, kept, numel) -> dense FLOPs; scaled by kept / numel on read.
        self._dense_flops: Counter[tuple[str, str, int, int]] = Counter()
        self._pending_weight_gradient: Counter[str] = Counter()
        # Passes are keyed by (model version, input signature, dtype, training mode); the version
        # changes when attach sees other layers, so passes on an older model keep their cost.
        self._model_version = 0
        self._forward_samples: Counter[tuple] = Counter()
        self._backward_samples: Counter[tuple] = Counter()
        # key -> forward and backward non-matmul FLOPs per sample
        self._other_per_sample: dict[tuple, tuple[float, float]] = {}
        # key -> (copy of the model as the pass saw it, calibration inputs), until measured
        self._unmeasured: dict[tuple, tuple[nn.Module, tuple, dict]] = {}
        self._calibrating = False
        self.attach(model)

    def __deepcopy__(self, memo: dict) -> TrainingFlopCounter:
        """A copied model carries copies of the hooks (GDumb copies its model every experience): the
        copies must neither count nor measure, only the counter attached to the trained model does."""
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        clone.counting = False
        return clone

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module) -> None:
        """Hook ``model`` (again, if its layers changed since the last call).

        Changed layers make the non-matmul cost per sample be measured again for the next passes;
        the passes made so far keep the cost of the model they ran on.
        """
        layers = counted_layers(model)
        if model is self.model and layers == self._weight_names:
            return
        self.detach()
        self.model = model
        self._weight_names = layers
        self._multiply_adds = {m: dense_multiply_adds_per_output(m) for m in layers}
        self._model_version += 1
        # the wrapper of a compiled model runs eagerly: its hook can copy the original module
        self._handles.append(model.register_forward_hook(self._on_model_forward, with_kwargs=True))
        for layer in layers:
            self._handles.append(layer.register_forward_hook(self._on_layer_forward))

    def detach(self) -> None:
        """Remove the hooks; the counts are kept."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _active(self) -> bool:
        return self.counting and not self._calibrating

    def _on_layer_forward(self, layer: nn.Module, inputs: tuple, output: Any) -> None:
        if not self._active() or not isinstance(output, Tensor):
            return
        name = self._weight_names[layer]
        counted = inputs[0] if getattr(layer, "transposed", False) else output
        dense = 2 * counted.numel() * self._multiply_adds[layer]
        kept, numel = self.weight_kept.get(name, DENSE)
        self._dense_flops[("forward", name, kept, numel)] += dense
        if output.requires_grad:
            input_needs_gradient = isinstance(inputs[0], Tensor) and inputs[0].requires_grad
            weight_needs_gradient = layer.weight.requires_grad
            output.register_hook(
                partial(self._on_layer_backward, name, dense, (kept, numel), input_needs_gradient,
                        weight_needs_gradient)
            )

    def _on_layer_backward(
        self,
        name: str,
        dense: int,
        weight_kept: tuple[int, int],
        input_needs_gradient: bool,
        weight_needs_gradient: bool,
        _grad: Tensor,
    ) -> None:
        if input_needs_gradient:
            self._dense_flops[("input_gradient", name, *weight_kept)] += dense
        if weight_needs_gradient:
            self._pending_weight_gradient[name] += dense

    def _on_model_forward(self, model: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        if not self._active():
            return
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        if not tensors:
            return
        batch = tensors[0].shape[0] if tensors[0].dim() else 1
        training = original_module(model).training
        key = (self._model_version, tuple(tensors[0].shape[1:]), tensors[0].dtype, training)
        if key not in self._other_per_sample and key not in self._unmeasured:
            self._snapshot(key, args, kwargs, batch)
        self._forward_samples[key] += batch
        result = next((t for t in tree_leaves(output) if isinstance(t, Tensor)), None)
        if result is not None and result.requires_grad:
            result.register_hook(partial(self._on_model_backward, key, batch))

    def _on_model_backward(self, key: tuple, batch: int, _grad: Tensor) -> None:
        self._backward_samples[key] += batch

    # --------------------------------------------------------------- results
    def settle_weight_gradients(self, gradient_kept: dict[str, tuple[int, int]]) -> None:
        """Book the pending weight gradients with the kept fraction applied at this step.

        Also measures the model copies of passes first seen since: this runs between steps, outside
        any pass, and frees the copies early.
        """
        for name, dense in self._pending_weight_gradient.items():
            kept, numel = gradient_kept.get(name, DENSE)
            self._dense_flops[("weight_gradient", name, kept, numel)] += dense
        self._pending_weight_gradient.clear()
        self._measure_unmeasured()

    def per_layer(self) -> dict[str, FlopBreakdown]:
        """Matmul-like FLOPs booked so far, per weight name."""
        layers: dict[str, FlopBreakdown] = {}
        for (component, name, kept, numel), dense in self._dense_flops.items():
            breakdown = layers.setdefault(name, FlopBreakdown())
            setattr(breakdown, component, getattr(breakdown, component) + dense * kept / numel)
        return layers

    def processed_samples(self) -> tuple[int, int]:
        """Samples counted so far through the model's forward, and through its backward."""
        return sum(self._forward_samples.values()), sum(self._backward_samples.values())

    def other_flops(self) -> float:
        """Dense FLOPs of the non-matmul operations of every counted pass."""
        self._measure_unmeasured()
        total = 0.0
        for key, samples in self._forward_samples.items():
            forward_cost, backward_cost = self._other_per_sample[key]
            total += forward_cost * samples + backward_cost * self._backward_samples[key]
        return total

    def breakdown(self) -> FlopBreakdown:
        """All FLOPs booked so far (pending weight gradients are not yet included)."""
        result = FlopBreakdown(other=self.other_flops())
        for layer in self.per_layer().values():
            result.forward += layer.forward
            result.input_gradient += layer.input_gradient
            result.weight_gradient += layer.weight_gradient
        return result

    def reset(self) -> None:
        """Forget all counts (hooks and the current model's calibrations stay)."""
        self._dense_flops.clear()
        self._pending_weight_gradient.clear()
        self._forward_samples.clear()
        self._backward_samples.clear()
        current = self._model_version
        self._other_per_sample = {key: c for key, c in self._other_per_sample.items() if key[0] == current}
        self._unmeasured = {key: c for key, c in self._unmeasured.items() if key[0] == current}

    # ----------------------------------------------------------- calibration
    def _snapshot(self, key: tuple, args: tuple, kwargs: dict, batch: int) -> None:
        """Copy the model as this pass sees it, with the pass's first sample, for measuring later."""
        try:
            with _disable_current_modes(), torch.inference_mode(False):
                # the copy's hooks stay this counter's (idle while it measures): the counter is not copied
                replica = copy.deepcopy(original_module(self.model), {id(self): self})
                self._unmeasured[key] = (replica, *calibration_inputs(args, kwargs, batch))
        except Exception as error:  # an uncopyable model must not stop training
            warn_unmeasured(error)
            self._other_per_sample[key] = (0.0, 0.0)

    def _measure_unmeasured(self) -> None:
        while self._unmeasured:
            key, (replica, args, kwargs) = self._unmeasured.popitem()
            self._other_per_sample[key] = self._calibrate(replica, args, kwargs, training=key[-1])

    def _calibrate(
        self, replica: nn.Module, args: tuple, kwargs: dict, training: bool
    ) -> tuple[float, float]:
        """Forward and backward non-matmul FLOPs per sample of a model copy.

        Dispatch modes active around the call (a FlopCounterMode, say) are set aside, so they do not
        see the copy's work and the measurement sees all of it.
        """
        self._calibrating = True
        devices = [t.device for t in tree_leaves(args) if isinstance(t, Tensor) and t.is_cuda]
        try:
            replica.train(training)
            with (
                _disable_current_modes(),
                torch.inference_mode(False),
                torch.random.fork_rng(devices=devices[:1]),
                torch.enable_grad(),
            ):
                with ElementwiseCostMode() as forward_cost:
                    loss = calibration_loss(replica(*args, **kwargs))
                backward = 0
                if loss.requires_grad:
                    with ElementwiseCostMode() as backward_cost:
                        loss.backward()
                    backward = backward_cost.flops
            return forward_cost.flops / CALIBRATION_SAMPLES, backward / CALIBRATION_SAMPLES
        except Exception as error:  # a model that fails on the copied inputs must not stop training
            warn_unmeasured(error)
            return 0.0, 0.0
        finally:
            self._calibrating = False


def warn_unmeasured(error: Exception) -> None:
    warnings.warn(
        f"could not measure the non-matmul FLOPs of the model ({error!r}); counting them as 0",
        stacklevel=3,
    )


def calibration_inputs(args: tuple, kwargs: dict, batch: int) -> tuple[tuple, dict]:
    """The pass's first sample, repeated to a batch of two (train-mode BatchNorm needs two)."""

    def first_sample(value: Any) -> Any:
        if isinstance(value, Tensor) and value.dim() and value.shape[0] == batch:
            sample = value[:1].detach().clone()
            return sample.expand(CALIBRATION_SAMPLES, *sample.shape[1:]).clone()
        return value

    return tuple(first_sample(a) for a in args), {k: first_sample(v) for k, v in kwargs.items()}


def calibration_loss(output: Any) -> Tensor:
    """Cross-entropy on class scores, else a plain sum: the loss ops are part of the dense cost."""
    scores = next(t for t in tree_leaves(output) if isinstance(t, Tensor))
    if scores.dim() == 2 and scores.is_floating_point():
        targets = torch.zeros(scores.shape[0], dtype=torch.long, device=scores.device)
        return F.cross_entropy(scores, targets)
    return scores.float().sum()
