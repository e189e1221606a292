"""Which parameters are sparse, and at what ratio.

Default, the reference's rule: every convolution weight except the input layer (the first layer the
input passes through); Linear layers, hidden ones and the classifier, stay dense. A model with no
such convolution (an MLP such as Avalanche's ``SimpleMLP``, or a network whose only convolution is its
stem) masks its Linear weights instead, the input layer included (in an MLP it holds most of the
weights), all but the last Linear the input passes through (the classifier). Only parameters that
train (``requires_grad``) are ever chosen: a frozen backbone or a progressive network's frozen
columns are left alone. On ``models.ResNet18`` the default is the 16 block 3x3 convolutions plus the
3 1x1 shortcut convolutions; the reference's own set, the block convolutions only, is
``experiments/profiles/resnet18_*.yaml``. Biases and normalisation parameters are never masked (the
reference code froze BatchNorm biases at zero by accident). A profile in the reference's YAML format
(``prune_ratios: {parameter_name: sparsity}``) overrides the default and alone decides the layer set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from avalanche_sparcl.distributed import decided_on_rank0
from avalanche_sparcl.validation import check_fraction, close_matches_hint, describe_yaml_error, load_yaml

ProfileLike = Mapping[str, float] | str | os.PathLike

CONVOLUTIONS = nn.modules.conv._ConvNd
MASKABLE_MODULES = (nn.Linear, CONVOLUTIONS)
NORMALISATION_MODULES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def execution_order(model: nn.Module, run_forward: Callable[[], Any]) -> list[tuple[str, nn.Module]]:
    """Convolution and Linear modules in the order ``run_forward`` first passes through them.

    The forward runs in training mode, as training will (iCaRL's model, for one, answers only in
    training mode before its first experience), with normalisation layers in eval mode so their
    statistics stay untouched, without gradients and without drawing from the global random streams.
    """
    order: list[tuple[str, nn.Module]] = []
    seen: set[int] = set()

    def record(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, _inputs: Any) -> None:
            if id(module) not in seen:
                seen.add(id(module))
                order.append((name, module))

        return hook

    handles = [
        module.register_forward_pre_hook(record(name))
        for name, module in model.named_modules()
        if isinstance(module, MASKABLE_MODULES)
    ]
    training_modes = {name: module.training for name, module in model.named_modules()}
    devices = [param.device for param in model.parameters() if param.is_cuda][:1]
    try:
        model.train()
        for module in model.modules():
            if isinstance(module, NORMALISATION_MODULES):
                module.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            run_forward()
    finally:
        for handle in handles:
            handle.remove()
        for name, module in model.named_modules():
            module.train(training_modes[name])
    return order


def parameter_names(model: nn.Module) -> dict[int, str]:
    """Each parameter object's name as ``named_parameters`` gives it: a weight shared by two
    modules has one name, the first module's."""
    return {id(param): name for name, param in model.named_parameters()}


def default_sparse_weights(model: nn.Module, run_forward: Callable[[], Any]) -> list[str]:
    """Names of the weights TDM masks by default, in execution order (see the module docstring).

    A ValueError for a model with no such layer at all (a single weight layer); an empty list when
    the only candidates are frozen (CWR* trains its classifier alone): nothing that trains to mask.

    Convolutions hold most of a CNN's compute and the reference keeps its Linear layers dense, so
    Linear layers are masked only when no convolution past the input layer trains. In data-parallel
    training rank 0 alone runs the forward pass and tells the other ranks the names.
    """
    return decided_on_rank0(lambda: sparse_weights_by_execution(model, run_forward))


def sparse_weights_by_execution(model: nn.Module, run_forward: Callable[[], Any]) -> list[str]:
    """``default_sparse_weights`` in one process."""
    order = execution_order(model, run_forward)
    convolutions = [module for _, module in order[1:] if isinstance(module, CONVOLUTIONS)]
    chosen = [module for module in convolutions if module.weight.requires_grad]
    if not chosen:
        linears = [module for _, module in order if isinstance(module, nn.Linear)]
        chosen = [module for module in linears[:-1] if module.weight.requires_grad]
    weight_names = parameter_names(model)
    names = list(dict.fromkeys(weight_names[id(module.weight)] for module in chosen))
    frozen = any(not module.weight.requires_grad for _, module in order)
    if not names and not frozen:
        seen = ", ".join(
            name + ("" if module.weight.requires_grad else " (frozen)") for name, module in order
        )
        raise ValueError(
            "the model has no layer SparCL can make sparse: it masks the convolution weights that "
            "train, other than the input layer, or, in a model without such a convolution, the Linear "
            "weights that train, other than the classifier (the last one), and the model's forward "
            f"pass went through these only: {seen or 'none'}. Pass a profile to choose layers explicitly."
        )
    return names


def trainable_parameters(model: nn.Module, names: Iterable[str]) -> list[str]:
    """The names, among ``names``, of the model's parameters that train (``requires_grad``)."""
    params = dict(model.named_parameters())
    return [name for name in names if name in params and params[name].requires_grad]


def load_profile(profile: ProfileLike) -> dict[str, float]:
    """Per-parameter sparsities from a mapping or a YAML file in the reference's format.

    Every error is a ValueError naming the file; a YAML error also gives the line (and a parameter
    named twice in the file is one).
    """
    if isinstance(profile, (str, os.PathLike)):
        path = Path(profile)
        if not path.is_file():
            raise ValueError(f"profile file {str(path)!r} does not exist")
        try:
            loaded = load_yaml(path.read_text())
        except OSError as error:
            raise ValueError(f"profile file {str(path)!r} cannot be read ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise ValueError(f"profile file {str(path)!r} is {describe_yaml_error(error)}") from None
        if not isinstance(loaded, Mapping) or not isinstance(loaded.get("prune_ratios"), Mapping):
            raise ValueError(
                f"profile file {str(path)!r} must hold a mapping 'prune_ratios: {{parameter_name: sparsity}}'"
            )
        ratios = loaded["prune_ratios"]
    elif isinstance(profile, Mapping):
        ratios = profile.get("prune_ratios", profile)
    else:
        raise ValueError(
            "profile must be a mapping {parameter_name: sparsity} or the path of a YAML file, "
            f"got {type(profile).__name__}"
        )
    if not ratios:
        raise ValueError("profile names no parameter")
    return {
        str(name): check_fraction(f"profile sparsity of {name!r}", ratio) for name, ratio in ratios.items()
    }


def parameters_named(model: nn.Module, names: Iterable[str]) -> dict[str, nn.Parameter]:
    """The model's parameters with these names, looked up by name: a strategy may replace the model
    (GDumb) or its parameters, and the masks follow them as long as the names stay."""
    current = dict(model.named_parameters())
    missing = [name for name in names if name not in current]
    if missing:
        raise ValueError(
            f"the model no longer has the masked parameters {', '.join(missing)}: SparCL follows its "
            "layers by parameter name, so the model may be replaced but must keep those names"
        )
    return {name: current[name] for name in names}


def never_masked(model: nn.Module, names: Iterable[str]) -> list[str]:
    """Those of ``names`` that are biases or normalisation parameters, each with what it is: SparCL
    never masks them (pruning a BatchNorm scale silences whole channels)."""
    kinds: dict[str, str] = {}
    for module_name, module in model.named_modules():
        for param_name, _ in module.named_parameters(recurse=False):
            full_name = f"{module_name}.{param_name}" if module_name else param_name
            if isinstance(module, NORMALISATION_MODULES):
                kinds[full_name] = f"{type(module).__name__} {param_name}"
            elif param_name == "bias":
                kinds[full_name] = f"{type(module).__name__} bias"
    return [f"{name} ({kinds[name]})" for name in names if name in kinds]


def resolve_profile(model: nn.Module, ratios: Mapping[str, float]) -> dict[str, nn.Parameter]:
    """The model's parameters named by a profile; unknown names raise one error listing them all, as
    do biases and normalisation parameters."""
    params = dict(model.named_parameters())
    unknown = [name for name in ratios if name not in params]
    if unknown:
        listed = "; ".join(repr(name) + close_matches_hint(name, params) for name in unknown)
        raise ValueError(f"profile names parameters the model does not have: {listed}")
    frozen = [name for name in ratios if not params[name].requires_grad]
    if frozen:
        raise ValueError(
            f"profile names parameters that do not train (requires_grad=False): {', '.join(frozen)}; "
            "SparCL masks only weights the optimizer updates"
        )
    refused = never_masked(model, ratios)
    if refused:
        raise ValueError(
            "profile names biases or normalisation parameters, which SparCL never masks: "
            f"{', '.join(refused)}; a profile names convolution and Linear weights"
        )
    return {name: params[name] for name in ratios}


def erk_sparsities(shapes: Mapping[str, tuple[int, ...]], sparsity: float) -> dict[str, float]:
    """Erdos-Renyi-kernel sparsities (RigL, Evci et al. 2020) keeping the same total as ``sparsity``
    everywhere: a layer's density is proportional to ``sum(shape) / prod(shape)``, so small layers
    (few inputs and outputs per weight) stay denser. Layers the rule would make denser than dense
    are kept dense and the others share the rest, as in RigL.
    """
    numel = {name: math.prod(shape) for name, shape in shapes.items()}
    kept_total = sum(numel.values()) * (1 - sparsity)
    dense: set[str] = set()
    while True:
        free = [name for name in shapes if name not in dense]
        raw = {name: sum(shapes[name]) / numel[name] for name in free}
        budget = kept_total - sum(numel[name] for name in dense)
        scale = budget / sum(raw[name] * numel[name] for name in free) if free else 0.0
        over = [name for name in free if raw[name] * scale > 1]
        if not over:
            break
        dense.update(over)
    return {name: 0.0 if name in dense else 1 - raw[name] * scale for name in shapes}
