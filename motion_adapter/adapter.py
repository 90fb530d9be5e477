"""LoRA layers inside a denoiser, through peft: inject, read and write their tensors, mix, train, fuse, remove.

The only module that imports peft. It works on a bare denoiser (nn.Module) and knows nothing of pipelines,
files or tokens. Several adapters live side by side in each layer; which are active and at what scale is set
per module by `apply_mix`, so that loading a second adapter never switches the first off.
"""

import re
import statistics
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import replace

import torch
from accelerate import init_empty_weights
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from torch import nn

from .format import LoraPair


def lora_layers(denoiser: nn.Module) -> dict[str, LoraLayer]:
    """Every layer that carries at least one LoRA, by module path (without walking into the LoRA layers)."""
    found = {}

    def walk(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}{child_name}"
            if isinstance(child, LoraLayer):
                found[path] = child
            else:
                walk(child, path + ".")

    walk(denoiser, "")
    return found


def adapter_names(denoiser: nn.Module) -> set[str]:
    """The names of every LoRA the denoiser's layers carry, whoever put them there."""
    return {name for layer in lora_layers(denoiser).values() for name in layer.lora_A}


def inject(
    denoiser: nn.Module,
    adapter_name: str,
    ranks: dict[str, int],
    alphas: dict[str, float],
    *,
    dropout: float = 0.0,
    empty: bool = False,
) -> None:
    """Add LoRA `adapter_name` to exactly the modules in `ranks` (module path -> rank), with their alphas.

    Layers that carry no LoRA yet are wrapped by peft's `inject_adapter_in_model`; layers that already carry one
    get the new adapter through their own `update_layer`, which skips peft's walk over the whole model, so the
    tenth adapter loads as fast as the first. `empty=True` creates the tensors on the meta device, for a caller
    that assigns every one of them next (`set_state`). Fresh adapters start with B = 0 (no change).
    """
    rank = statistics.mode(ranks.values())  # peft's defaults; the others go to rank_pattern / alpha_pattern
    alpha = statistics.mode(alphas.values())
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules="^(?:" + "|".join(re.escape(name) for name in sorted(ranks)) + ")$",
        rank_pattern={re.escape(name): r for name, r in ranks.items() if r != rank},
        alpha_pattern={re.escape(name): a for name, a in alphas.items() if a != alpha},
        lora_dropout=dropout,
        inference_mode=True,
    )
    wrapped = lora_layers(denoiser)
    fresh = sorted(name for name in ranks if name not in wrapped)
    with _trainable_kept(denoiser):
        if fresh:
            fresh_config = replace(config, target_modules="^(?:" + "|".join(map(re.escape, fresh)) + ")$")
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                inject_adapter_in_model(fresh_config, denoiser, adapter_name=adapter_name, low_cpu_mem_usage=empty)
        with init_empty_weights() if empty else nullcontext():
            for name in ranks:
                if name in wrapped:
                    wrapped[name].update_layer(adapter_name, ranks[name], alphas[name], config=config)
    if not hasattr(denoiser, "peft_config"):
        denoiser.peft_config = {}
    denoiser.peft_config[adapter_name] = config


@contextmanager
def _trainable_kept(denoiser: nn.Module):
    """peft freezes every adapter's tensors as it injects one or switches adapters: put back those that trained."""
    trainable = [p for name, p in denoiser.named_parameters() if p.requires_grad and ".lora_" in name]
    yield
    for param in trainable:
        param.requires_grad_(True)


def get_state(denoiser: nn.Module, adapter_name: str) -> dict[str, LoraPair]:
    """The tensors of one adapter, by module path (detached copies on the CPU, float32)."""
    state = {}
    for name, layer in lora_layers(denoiser).items():
        if adapter_name in layer.lora_A:
            state[name] = LoraPair(
                down=layer.lora_A[adapter_name].weight.detach().float().cpu().clone(),
                up=layer.lora_B[adapter_name].weight.detach().float().cpu().clone(),
                alpha=float(layer.lora_alpha[adapter_name]),
            )
    return state


def set_state(denoiser: nn.Module, adapter_name: str, modules: dict[str, LoraPair]) -> None:
    """Put tensors into an injected adapter, in each base layer's dtype and device (assigns, so meta tensors work)."""
    layers = lora_layers(denoiser)
    for name, pair in modules.items():
        layer = layers[name]
        base = layer.get_base_layer().weight
        for factors, tensor in ((layer.lora_A, pair.down), (layer.lora_B, pair.up)):
            factors[adapter_name].weight = nn.Parameter(tensor.to(base.device, base.dtype), requires_grad=False)


def apply_mix(denoiser: nn.Module, active: list[str], scale, managed) -> None:
    """Activate `active` adapters in every layer, each at `scale(adapter, module_path)` times alpha / rank.

    Only the `managed` adapters (the caller's) are switched and scaled: a LoRA put there by other means, such as
    diffusers' `load_lora_weights`, stays on or off as it was, at its own scale.
    """
    with _trainable_kept(denoiser):
        for name, layer in lora_layers(denoiser).items():
            others = [adapter for adapter in layer.active_adapters if adapter not in managed]
            present = [adapter for adapter in active if adapter in layer.lora_A]
            layer.set_adapter(others + present, inference_mode=True)
            for adapter in layer.lora_A:
                if adapter in managed:
                    layer.set_scale(adapter, scale(adapter, name) if adapter in present else 0.0)


def set_trainable(denoiser: nn.Module, adapter_name: str | None) -> list[nn.Parameter]:
    """Freeze every parameter of the denoiser but `adapter_name`'s LoRA tensors; return those."""
    denoiser.requires_grad_(False)
    trainable = []
    if adapter_name is None:
        return trainable
    for layer in lora_layers(denoiser).values():
        if adapter_name in layer.lora_A:
            for factors in (layer.lora_A, layer.lora_B):
                factors[adapter_name].weight.requires_grad_(True)
                trainable.append(factors[adapter_name].weight)
    return trainable


def fuse(denoiser: nn.Module) -> dict[str, tuple[LoraLayer, dict[str, torch.Tensor], torch.dtype]]:
    """Fold each layer's active adapters, at their current scales, into its base weight.

    The LoRA layers are then taken out of the model, so a fused model runs exactly the base model's code; they
    are returned with a copy, in CPU memory, of each base parameter the folding changed, for `unfuse` to put back,
    and the base weight's dtype, to follow a cast of the model while fused.
    """
    fused = {}
    for name, layer in lora_layers(denoiser).items():
        active = [adapter for adapter in layer.active_adapters if adapter in layer.lora_A]
        base = layer.get_base_layer()
        originals = {key: p.detach().to("cpu", copy=True) for key, p in base.named_parameters()} if active else {}
        if active:
            layer.merge(adapter_names=active)
        _replace(denoiser, name, base)
        fused[name] = (layer, originals, base.weight.dtype)
    return fused


def unfuse(denoiser: nn.Module, fused: dict[str, tuple[LoraLayer, dict[str, torch.Tensor], torch.dtype]]) -> None:
    """Put the LoRA layers back, their base weights as they were before `fuse`, bit for bit.

    A model moved or cast while fused (`pipe.to("cuda")`) moves or casts its LoRA tensors with it here, as it would
    have had they stayed in the model.
    """
    with torch.no_grad():
        for name, (layer, originals, fused_dtype) in fused.items():
            base = layer.get_base_layer()
            for key, p in base.named_parameters():
                if key in originals:
                    p.copy_(originals[key])
            layer.merged_adapters.clear()  # peft's record of what it merged: nothing now
            layer.to(base.weight.device)
            if base.weight.dtype != fused_dtype:
                layer.to(base.weight.dtype)
            _replace(denoiser, name, layer)


def delete(denoiser: nn.Module, adapter_name: str) -> None:
    """Remove one adapter; a layer left with no adapter becomes its base layer again."""
    for name, layer in lora_layers(denoiser).items():
        if adapter_name in layer.lora_A:
            layer.delete_adapter(adapter_name)
            if not layer.lora_A:
                _replace(denoiser, name, layer.get_base_layer())
    config = getattr(denoiser, "peft_config", None)
    if isinstance(config, dict):
        config.pop(adapter_name, None)
        if not config:
            del denoiser.peft_config


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, child, module)
