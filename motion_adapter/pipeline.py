"""Adapters on pipelines: add, save, load, compose, fuse, unload; learned tokens in the tokenizer and text encoder.

The only code that touches pipeline objects. Each pipeline keeps a small registry (`_MotionState`) of the
adapters it holds, their weights and tokens. Every change is checked in full before anything is touched, so a
refused call leaves the pipeline exactly as it was.

Composition: the delta of each module is the weighted sum of the enabled adapters' deltas. A weight is a number,
or a dict of per-group numbers ({"temporal": 1.0, "spatial_kv": 0.6}; groups not named keep 1.0).
"""

import copy
import math
import numbers
import re
import shutil
import warnings
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from . import adapter, hub
from .constants import FORMAT_VERSION
from .errors import AdapterStateError, IncompatibleAdapterError
from .files import temporary_sibling
from .format import AdapterFile, AdapterInfo, check_kind, read_adapter, write_adapter
from .targets import (
    architecture_fingerprint,
    architecture_of,
    denoiser_of,
    lora_capable_modules,
    module_shape,
    resolve_targets,
    role_of,
)

Weight = float | dict[str, float]


@dataclass
class _Entry:
    """One adapter held by a pipeline."""

    info: AdapterInfo
    roles: dict[str, str]  # module path -> group
    weight: Weight = 1.0
    enabled: bool = True
    embeddings: dict[str, torch.Tensor] = field(default_factory=dict)  # learned token -> row


@dataclass
class _MotionState:
    """What a pipeline needs to know to compose and to undo: adapters in load order, and the base's own state."""

    adapters: dict[str, _Entry] = field(default_factory=dict)
    fused_layers: dict = field(default_factory=dict)  # the LoRA layers taken out of a fused model, and base copies
    base_requires_grad: dict[str, bool] = field(default_factory=dict)
    base_tokenizer: object = None  # a copy taken before the first learned token was added
    base_vocab_size: int = 0
    added_tokens: set = field(default_factory=set)  # the learned tokens this library added since that copy


def _state(pipe) -> _MotionState:
    state = getattr(pipe, "_motion_state", None)
    if state is None:
        state = _MotionState()
        pipe._motion_state = state
    return state


# ---------------------------------------------------------------- creating and saving


def add_motion_adapter(
    pipe,
    adapter_name: str = "default",
    *,
    preset: str = "motion",
    rank: int = 16,
    alpha: float = 16,
    dropout: float = 0.0,
    token: str | list[str] | None = None,
    kind: str = "motion",
    prompt_template: str | None = None,
    trainable: bool = True,
):
    """Add a fresh LoRA (B = 0, so the output is unchanged) over the preset's layers, ready to train.

    `token` is the word the adapter binds (or a list of words: a joint motion + subject adapter binds two).
    With `trainable=True` every other parameter of the denoiser is frozen. Returns the TargetSpec it covers.
    """
    if rank < 1 or not math.isfinite(alpha):
        raise ValueError(f"rank must be >= 1 and alpha finite, got rank={rank}, alpha={alpha}")
    check_kind(kind)
    state = _state(pipe)
    _check_new_name(pipe, state, adapter_name)
    _check_not_fused(state, "add an adapter", pipe)
    denoiser = denoiser_of(pipe)
    spec = resolve_targets(denoiser, preset)
    tokens = [token] if isinstance(token, str) else list(token or [])
    _check_token_clash(pipe, state, adapter_name, tokens, "give this one another token")
    arch = architecture_of(denoiser)
    info = AdapterInfo(
        kind=kind,
        tokens=tokens,
        prompt_template=prompt_template,
        base_model=base_model_id(pipe),
        preset=preset,
        rank=rank,
        alpha=float(alpha),
        num_params=0,
        file_bytes=0,
        format_version=FORMAT_VERSION,
        component=arch.component if arch else "unet",
        base_class=type(denoiser).__name__,
        fingerprint=architecture_fingerprint(denoiser),
    )
    roles = {name: spec.role_of(name) for name in spec.module_names}
    _inject(pipe, state, adapter_name, {n: rank for n in roles}, {n: float(alpha) for n in roles}, dropout=dropout)
    state.adapters[adapter_name] = _Entry(info=info, roles=roles)
    _apply(pipe)
    if trainable:
        adapter.set_trainable(denoiser, adapter_name)
    return spec


def save_motion_adapter(
    pipe,
    adapter_name: str,
    output_dir,
    *,
    dtype: str | torch.dtype = "float16",
    training: dict | None = None,
    sample=None,
) -> Path:
    """Write one adapter held by `pipe` as a folder (or one file when `output_dir` ends in `.safetensors`).

    `training` is a summary recorded in the header; `sample` an animation copied into the folder for the card.
    """
    state = _state(pipe)
    entry = _entry(state, adapter_name)
    denoiser = denoiser_of(pipe)
    _check_not_fused(state, "save an adapter")
    modules = adapter.get_state(denoiser, adapter_name)
    info = replace(
        entry.info, format_version=FORMAT_VERSION, training=training if training is not None else entry.info.training,
        kind="motion" if entry.info.kind == "lora" else entry.info.kind,  # a LoRA made elsewhere, saved as ours
    )  # fmt: skip
    embeddings = {token: _embedding_row(pipe, token) for token in entry.embeddings}
    output_dir = Path(output_dir)
    sample_name = None
    if sample is not None and output_dir.suffix != ".safetensors":
        output_dir.mkdir(parents=True, exist_ok=True)
        sample_name = "sample" + Path(sample).suffix
        if Path(sample).resolve() != (output_dir / sample_name).resolve():
            with temporary_sibling(output_dir / sample_name) as tmp:
                shutil.copyfile(sample, tmp)
        for stale in output_dir.glob("sample.*"):  # an earlier save's, in another format: the card shows this one
            if stale.name != sample_name:
                stale.unlink()
    card = partial(hub.model_card, source=str(output_dir), sample=sample_name)
    return write_adapter(output_dir, info, modules, embeddings=embeddings, dtype=dtype, card=card)


def learn_token(pipe, adapter_name: str, token: str, *, init_from: str) -> torch.nn.Parameter:
    """Add `token` to the tokenizer with an embedding initialised from the word `init_from`, owned by the adapter.

    Returns the text encoder's input embedding weight (its new row is the one to train).
    """
    state = _state(pipe)
    entry = _entry(state, adapter_name)
    _check_token_clash(pipe, state, adapter_name, [token], "learn another token")
    _check_new_token(pipe, token, fix=f"learn a word the tokenizer lacks, such as '<{token}>'")
    ids = pipe.tokenizer(init_from, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError(f"init_from={init_from!r} encodes to no token; give a word such as 'dog'")
    rows = pipe.text_encoder.get_input_embeddings().weight.detach()
    row = rows[ids].mean(dim=0)
    _add_tokens(pipe, state, {token: row})
    entry.embeddings[token] = row
    if token not in entry.info.tokens:
        entry.info.tokens.append(token)
    return pipe.text_encoder.get_input_embeddings().weight


# ---------------------------------------------------------------- loading


def load_motion_adapter(
    pipe,
    source,
    *,
    adapter_name: str | None = None,
    weight: Weight = 1.0,
    token: str | None = None,
    revision: str | None = None,
    cache_dir=None,
    local_files_only: bool = False,
    strict: bool = False,
) -> str:
    """Load an adapter from a folder, a `.safetensors` file or a Hub repo id, next to those already loaded.

    Adapters already loaded stay active. `token=` renames the adapter's single learned token. `strict=True`
    refuses an adapter trained on another checkpoint of the same architecture (a warning otherwise).
    Returns the adapter name (by default derived from the source).
    """
    state = _state(pipe)
    _check_not_fused(state, "load an adapter", pipe)
    adapter_name = adapter_name or name_from_source(source)
    _check_new_name(pipe, state, adapter_name)  # before any download
    _check_weight(adapter_name, weight)
    folder = hub.resolve_source(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    loaded = read_adapter(folder)
    if token is not None:
        loaded = _rename_token(loaded, token)
    attach_adapter(pipe, adapter_name, loaded, weight=weight, strict=strict)
    return adapter_name


def attach_adapter(pipe, adapter_name: str, loaded: AdapterFile, *, weight: Weight = 1.0, strict: bool = False) -> None:
    """Put an adapter that is already in memory (read from disk, or just trained) into the pipeline.

    Everything is checked first; a failure half-way through the injection is rolled back.
    """
    state = _state(pipe)
    _check_not_fused(state, "load an adapter", pipe)
    _check_new_name(pipe, state, adapter_name)
    denoiser = denoiser_of(pipe)
    _check_fits(denoiser, loaded, base_model_id(pipe), strict=strict)
    rename = (
        "load this one with token='<another word>'"
        if len(loaded.embeddings) == 1
        else "its tokens are words it was trained on, which only training with another token changes"
    )
    _check_token_clash(pipe, state, adapter_name, loaded.info.tokens, rename)
    for new_token, row in loaded.embeddings.items():
        _check_new_token(pipe, new_token, row, fix=f"load the adapter with token='<{new_token}>' (or another new word)",
                         source=loaded.info.path)
    arch = architecture_of(denoiser)
    roles = {name: role_of(arch, name) for name in loaded.modules}
    _check_weight(adapter_name, weight, roles.values())
    ranks = {name: pair.rank for name, pair in loaded.modules.items()}
    alphas = {name: pair.alpha for name, pair in loaded.modules.items()}
    try:
        _inject(pipe, state, adapter_name, ranks, alphas, empty=True)
        adapter.set_state(denoiser, adapter_name, loaded.modules)
    except Exception:
        adapter.delete(denoiser, adapter_name)  # roll back a half-done injection
        if not state.adapters:
            _restore_requires_grad(denoiser, state)
        raise
    _add_tokens(pipe, state, loaded.embeddings)
    state.adapters[adapter_name] = _Entry(info=loaded.info, roles=roles, weight=weight, embeddings=loaded.embeddings)
    _apply(pipe)


def _check_fits(denoiser: nn.Module, loaded: AdapterFile, base_model: str | None, *, strict: bool) -> None:
    """Refuse an adapter made for another architecture, naming the first module that does not fit."""
    info = loaded.info
    where = info.path
    layers = lora_capable_modules(denoiser)
    for name, pair in loaded.modules.items():
        if name not in layers and name in dict(denoiser.named_modules()):
            raise IncompatibleAdapterError(
                f"{where} adapts module {name}, which cannot carry a LoRA in {type(denoiser).__name__} (diffusers "
                "calls it in a way a LoRA layer breaks); drop that module's tensors from the file to load the rest"
            )
        if name not in layers:
            raise IncompatibleAdapterError(
                f"{where} adapts module {name}, which {type(denoiser).__name__} does not have: the adapter was made "
                f"for {info.base_class or 'another model'} ({info.base_model or 'unknown base'})"
            )
        in_dim, out_dim, kernel = module_shape(layers[name])
        expected_down = (pair.rank, in_dim, *kernel)
        expected_up = (out_dim, pair.rank, *(1,) * len(kernel))
        if tuple(pair.down.shape) != expected_down or tuple(pair.up.shape) != expected_up:
            raise IncompatibleAdapterError(
                f"{where} does not fit this {type(denoiser).__name__}: at module {name} the adapter has "
                f"lora_A {tuple(pair.down.shape)} / lora_B {tuple(pair.up.shape)}, the model's layer needs "
                f"{expected_down} / {expected_up}. It was made for {info.base_model or 'another base model'}"
            )
    fingerprint = architecture_fingerprint(denoiser)
    if info.fingerprint and info.fingerprint != fingerprint:
        raise IncompatibleAdapterError(
            f"{where} was made for another architecture ({info.base_class} {info.fingerprint}, base "
            f"{info.base_model}); this {type(denoiser).__name__} has fingerprint {fingerprint}"
        )
    if info.base_model and base_model and info.base_model != base_model:
        message = f"{where} was trained on {info.base_model}, and is loaded onto {base_model} (same architecture)"
        if strict:
            raise IncompatibleAdapterError(message + "; strict=True refuses it")
        warnings.warn(message + "; results may differ from the trained ones", stacklevel=3)


def _rename_token(loaded: AdapterFile, token: str) -> AdapterFile:
    learned = list(loaded.embeddings)
    if len(learned) != 1:
        raise AdapterStateError(
            f"token={token!r} renames an adapter's one learned token; {loaded.info.path} has {len(learned)} "
            f"({', '.join(learned) or 'none'})"
        )
    old = learned[0]
    info = replace(
        loaded.info,
        tokens=[token if t == old else t for t in loaded.info.tokens],
        learned_tokens=[token],
        prompt_template=(loaded.info.prompt_template or "").replace(old, token) or None,
    )
    return AdapterFile(info=info, modules=loaded.modules, embeddings={token: loaded.embeddings[old]})


# ---------------------------------------------------------------- composing


def set_motion_adapters(pipe, adapter_names, weights=None) -> None:
    """Make exactly these adapters active, with these weights (one per name; numbers or per-group dicts).

    Adapters not named stay loaded but off. A negative weight subtracts a motion; NaN and inf are refused.
    """
    state = _state(pipe)
    names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
    if weights is None:
        weights = [state.adapters[n].weight if n in state.adapters else 1.0 for n in names]
    elif not isinstance(weights, (list, tuple)):
        weights = [weights] * len(names)
    if len(weights) != len(names):
        raise AdapterStateError(f"{len(names)} adapter names but {len(weights)} weights; give one weight per adapter")
    for name, weight in zip(names, weights):
        _entry(state, name)
        _check_weight(name, weight, state.adapters[name].roles.values())
    _check_not_fused(state, "change the adapter weights")
    for name, entry in state.adapters.items():
        entry.enabled = name in names
    for name, weight in zip(names, weights):
        state.adapters[name].weight = weight
    _apply(pipe)


def enable_motion_adapters(pipe, adapter_names=None) -> None:
    """Switch adapters on again (all when no names are given), at the weights they had."""
    _toggle(pipe, adapter_names, True)


def disable_motion_adapters(pipe, adapter_names=None) -> None:
    """Switch adapters off without unloading them (all when no names are given)."""
    _toggle(pipe, adapter_names, False)


def _toggle(pipe, adapter_names, enabled: bool) -> None:
    state = _state(pipe)
    if adapter_names is None:
        names = list(state.adapters)
    else:
        names = [adapter_names] if isinstance(adapter_names, str) else adapter_names
    for name in names:
        _entry(state, name)
    _check_not_fused(state, "enable or disable adapters")
    for name in names:
        state.adapters[name].enabled = enabled
    _apply(pipe)


def delete_motion_adapter(pipe, adapter_name: str) -> None:
    """Unload one adapter (and its learned tokens); the others stay as they are."""
    state = _state(pipe)
    entry = _entry(state, adapter_name)
    _check_not_fused(state, "delete an adapter")
    adapter.delete(denoiser_of(pipe), adapter_name)
    del state.adapters[adapter_name]
    if entry.embeddings:
        _rebuild_tokens(pipe, state)
    if not state.adapters:
        unload_motion_adapters(pipe)
    else:
        _apply(pipe)


def fuse_motion_adapters(pipe) -> None:
    """Fold the active mix into the base weights: inference then costs what the base model costs."""
    state = _state(pipe)
    if not state.adapters:
        raise AdapterStateError("no motion adapter is loaded: nothing to fuse")
    if state.fused_layers:
        raise AdapterStateError("the adapters are already fused; unfuse_motion_adapters() first to change them")
    _check_not_fused(state, "fuse the motion adapters", pipe)
    state.fused_layers = adapter.fuse(denoiser_of(pipe))


def unfuse_motion_adapters(pipe) -> None:
    """Take the fused mix out of the base weights again: they are restored as they were, bit for bit."""
    state = _state(pipe)
    if not state.fused_layers:
        raise AdapterStateError("the adapters are not fused")
    adapter.unfuse(denoiser_of(pipe), state.fused_layers)
    state.fused_layers = {}


def unload_motion_adapters(pipe) -> None:
    """Remove every adapter and learned token, unfusing first if they are fused: back to the base model, bit for bit.

    Only this library's adapters go: a LoRA loaded with diffusers' `load_lora_weights` stays.
    """
    state = _state(pipe)
    denoiser = denoiser_of(pipe)
    if state.fused_layers:
        adapter.unfuse(denoiser, state.fused_layers)
    for name in state.adapters:  # a LoRA loaded by other means (diffusers' load_lora_weights) stays
        adapter.delete(denoiser, name)
    state.adapters.clear()
    _rebuild_tokens(pipe, state)
    _restore_requires_grad(denoiser, state)
    del pipe._motion_state


def learned_embeddings(pipe, adapter_name: str) -> dict[str, torch.Tensor]:
    """The current embedding rows of an adapter's learned tokens (as training left them)."""
    return {token: _embedding_row(pipe, token) for token in _entry(_state(pipe), adapter_name).embeddings}


def motion_adapter_weights(pipe) -> dict[str, Weight]:
    """The enabled adapters and their weights, in load order."""
    return {name: entry.weight for name, entry in _state(pipe).adapters.items() if entry.enabled}


# ---------------------------------------------------------------- internals


def _inject(pipe, state: _MotionState, adapter_name, ranks, alphas, *, dropout=0.0, empty=False) -> None:
    denoiser = denoiser_of(pipe)
    if not state.base_requires_grad:
        state.base_requires_grad = {name: p.requires_grad for name, p in denoiser.named_parameters()}
    adapter.inject(denoiser, adapter_name, ranks, alphas, dropout=dropout, empty=empty)
    for layer in adapter.lora_layers(denoiser).values():
        layer.train(denoiser.training)  # new LoRA modules start in train mode; follow the model's mode


def _restore_requires_grad(denoiser: nn.Module, state: _MotionState) -> None:
    """Give the base parameters back the trainable flags they had before peft froze them."""
    for name, param in denoiser.named_parameters():
        if name in state.base_requires_grad:
            param.requires_grad_(state.base_requires_grad[name])


def _apply(pipe) -> None:
    """Push the registry's enabled adapters and weights into every LoRA layer."""
    state = _state(pipe)
    active = [name for name, entry in state.adapters.items() if entry.enabled]

    def scale(adapter_name: str, module: str) -> float:
        entry = state.adapters[adapter_name]
        if isinstance(entry.weight, dict):
            return float(entry.weight.get(entry.roles.get(module), 1.0))
        return float(entry.weight)

    adapter.apply_mix(denoiser_of(pipe), active, scale, managed=set(state.adapters))


def _entry(state: _MotionState, adapter_name: str) -> _Entry:
    if adapter_name not in state.adapters:
        loaded = ", ".join(state.adapters) or "none"
        raise AdapterStateError(f"no adapter named {adapter_name!r} is loaded (loaded: {loaded})")
    return state.adapters[adapter_name]


def _check_new_name(pipe, state: _MotionState, adapter_name: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", adapter_name or ""):
        raise AdapterStateError(f"adapter_name={adapter_name!r}: use letters, digits, '_' and '-' only")
    if adapter_name in state.adapters:
        raise AdapterStateError(
            f"an adapter named {adapter_name!r} is already loaded; pass another adapter_name= or "
            "delete_motion_adapter() it first"
        )
    if adapter_name in adapter.adapter_names(denoiser_of(pipe)):
        raise AdapterStateError(
            f"this pipeline's {type(denoiser_of(pipe)).__name__} already carries a LoRA named {adapter_name!r}, "
            "loaded by other means (diffusers' load_lora_weights, or another pipeline sharing the model); pass "
            "another adapter_name="
        )


def _check_not_fused(state: _MotionState, action: str, pipe=None) -> None:
    """Refuse to change a fused mix; with `pipe`, also a model where another LoRA is fused (peft then runs only the
    merged weights of those layers, so an adapter added there would silently do nothing)."""
    if state.fused_layers:
        raise AdapterStateError(f"the adapters are fused into the base weights; unfuse_motion_adapters() to {action}")
    if pipe is not None and any(layer.merged for layer in adapter.lora_layers(denoiser_of(pipe)).values()):
        raise AdapterStateError(
            f"a LoRA loaded by other means is fused into this pipeline's model (diffusers' fuse_lora); "
            f"pipe.unfuse_lora() to {action}"
        )


def _check_weight(adapter_name: str, weight: Weight, roles=None) -> None:
    values = weight.values() if isinstance(weight, dict) else [weight]
    for value in values:
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise AdapterStateError(f"weight {value!r} for adapter {adapter_name!r}: weights must be finite numbers")
    if isinstance(weight, dict) and roles is not None:
        unknown = set(weight) - set(roles)
        if unknown:
            raise AdapterStateError(
                f"adapter {adapter_name!r} has no group {', '.join(sorted(unknown))}; its groups are "
                f"{', '.join(sorted(set(roles)))}"
            )


def _check_token_clash(pipe, state: _MotionState, adapter_name: str, tokens, fix: str) -> None:
    """Refuse a token another loaded adapter owns, or one the tokenizer reads the same way (CLIP's lowercases: "PLL"
    is "pll"); `fix` says how this adapter can take another."""
    tokenizer = getattr(pipe, "tokenizer", None)

    def read(token: str):
        return tuple(tokenizer(token, add_special_tokens=False).input_ids) if tokenizer is not None else token

    for other_name, other in state.adapters.items():
        if other_name == adapter_name:
            continue
        theirs = {read(token): token for token in other.info.tokens}
        for token in sorted(tokens):
            claimed = theirs.get(read(token))
            if claimed is not None:
                same = "" if claimed == token else f" (which this tokenizer reads as its {claimed!r})"
                raise AdapterStateError(
                    f"token {token!r} of adapter {adapter_name!r} is already claimed by adapter {other_name!r}{same}; "
                    f"{fix}, or pipe.delete_motion_adapter({other_name!r}) first"
                )


def _check_new_token(pipe, token: str, row: torch.Tensor | None = None, *, fix: str, source=None) -> None:
    if getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise IncompatibleAdapterError(f"the adapter learns token {token!r}, but this pipeline has no text encoder")
    if token in pipe.tokenizer.get_vocab():
        raise AdapterStateError(f"token {token!r} is already a word of this tokenizer; {fix}")
    dim = pipe.text_encoder.get_input_embeddings().embedding_dim
    if row is not None and row.shape[-1] != dim:
        raise IncompatibleAdapterError(
            f"{source or 'the adapter'}: the learned embedding of token {token!r} has size {row.shape[-1]}, this "
            f"text encoder's is {dim}: the adapter was made for another text encoder"
        )


def _add_tokens(pipe, state: _MotionState, embeddings: dict[str, torch.Tensor]) -> None:
    """Add learned tokens to the tokenizer and their rows to the text encoder's input embeddings."""
    if not embeddings:
        return
    if state.base_tokenizer is None:
        state.base_tokenizer = copy.deepcopy(pipe.tokenizer)
        state.base_vocab_size = pipe.text_encoder.get_input_embeddings().num_embeddings
    state.added_tokens.update(embeddings)
    _append_tokens(pipe, embeddings)


def _append_tokens(pipe, embeddings: dict[str, torch.Tensor]) -> None:
    """Add tokens to the tokenizer and their rows to the text encoder's input embeddings."""
    pipe.tokenizer.add_tokens(list(embeddings))
    pipe.text_encoder.resize_token_embeddings(len(pipe.tokenizer), mean_resizing=False)
    table = pipe.text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token, row in embeddings.items():
            table[pipe.tokenizer.convert_tokens_to_ids(token)] = row.to(table.device, table.dtype)


def _rebuild_tokens(pipe, state: _MotionState) -> None:
    """Restore the base tokenizer and embedding table, then add the learned tokens of the adapters still held."""
    if state.base_tokenizer is None:
        return
    for entry in state.adapters.values():  # keep the rows as they are now (training may have changed them)
        entry.embeddings = {token: _embedding_row(pipe, token) for token in entry.embeddings}
    remaining = {token: row for entry in state.adapters.values() for token, row in entry.embeddings.items()}
    base_vocab = state.base_tokenizer.get_vocab()
    others = {  # tokens added since by someone else (textual inversion): kept, with their rows
        token: _embedding_row(pipe, token)
        for token in pipe.tokenizer.get_vocab()
        if token not in base_vocab and token not in state.added_tokens
    }
    pipe.tokenizer = copy.deepcopy(state.base_tokenizer)
    pipe.text_encoder.resize_token_embeddings(state.base_vocab_size, mean_resizing=False)
    if others:
        _append_tokens(pipe, others)
    state.added_tokens.clear()
    if remaining:
        _add_tokens(pipe, state, remaining)
    else:
        state.base_tokenizer = None


def _embedding_row(pipe, token: str) -> torch.Tensor:
    table = pipe.text_encoder.get_input_embeddings().weight
    return table[pipe.tokenizer.convert_tokens_to_ids(token)].detach().float().cpu().clone()


def base_model_id(pipe) -> str | None:
    """The Hub id or folder the pipeline was loaded from, if it knows it."""
    name = getattr(pipe, "name_or_path", None) if not isinstance(pipe, nn.Module) else None
    name = name or getattr(getattr(denoiser_of(pipe), "config", None), "_name_or_path", None)
    return str(name) if name else None  # a pipeline loaded from a Path holds the Path


def name_from_source(source) -> str:
    """The default adapter name of a source: its folder or file name ("out/pll" and "user/pll" -> "pll")."""
    return safe_adapter_name(Path(str(source).rstrip("/")).name.removesuffix(".safetensors"))


def safe_adapter_name(text: str) -> str:
    """An adapter name made of the letters, digits, '_' and '-' of `text` ("<sks>" -> "sks")."""
    return re.sub(r"[^A-Za-z0-9_\-]", "", text.replace(".", "_")) or "adapter"


def check_prompt(pipe, prompt: str) -> list[str]:
    """Warn about words of a prompt that are adapter tokens no enabled adapter provides; return them.

    Those are the tokens of loaded but disabled adapters, and "<...>"-style learned tokens that no loaded adapter
    brought (the tokenizer would silently split them into characters).
    """
    state = getattr(pipe, "_motion_state", None) or _MotionState()
    provided = {t for entry in state.adapters.values() if entry.enabled for t in entry.info.tokens}
    disabled = {t for entry in state.adapters.values() if not entry.enabled for t in entry.info.tokens} - provided
    missing = [
        word for word in re.findall(r"<[^<>\s]+>|[\w'-]+", prompt)
        if word in disabled or (word.startswith("<") and word not in provided)
    ]  # fmt: skip
    if missing:
        warnings.warn(
            f"the prompt uses {', '.join(repr(w) for w in missing)}, which no enabled adapter provides "
            f"(enabled: {', '.join(n for n, e in state.adapters.items() if e.enabled) or 'none'})",
            stacklevel=2,
        )
    return missing


def generate(
    pipe,
    prompt: str,
    *,
    num_frames: int = 16,
    height: int | None = None,
    width: int | None = None,
    num_inference_steps: int = 40,
    guidance_scale: float = 9.0,
    seed: int = 0,
    negative_prompt: str | None = None,
):
    """One seeded clip from the pipeline as it is (adapters and all): float frames (frames, h, w, 3) in [0, 1].

    The prompt is checked first for adapter tokens that no enabled adapter provides (a warning).
    """
    check_prompt(pipe, prompt)
    return pipe(
        prompt,
        negative_prompt=negative_prompt,
        num_frames=num_frames,
        height=height,
        width=width,
        num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale,
        generator=torch.Generator().manual_seed(seed),  # on the CPU: the same clip on any device, offloaded or not
        output_type="np",
    ).frames[0]


PIPELINE_METHODS = {
    "load_motion_adapter": load_motion_adapter,
    "set_motion_adapters": set_motion_adapters,
    "enable_motion_adapters": enable_motion_adapters,
    "disable_motion_adapters": disable_motion_adapters,
    "delete_motion_adapter": delete_motion_adapter,
    "fuse_motion_adapters": fuse_motion_adapters,
    "unfuse_motion_adapters": unfuse_motion_adapters,
    "unload_motion_adapters": unload_motion_adapters,
    "save_motion_adapter": save_motion_adapter,
    "motion_adapter_weights": motion_adapter_weights,
}


def register_pipeline_methods() -> None:
    """Make the functions above methods of every diffusers pipeline (`pipe.load_motion_adapter(...)`)."""
    from diffusers import DiffusionPipeline

    for name, function in PIPELINE_METHODS.items():
        existing = getattr(DiffusionPipeline, name, None)
        if existing is not None and existing is not function:
            raise RuntimeError(
                f"diffusers' DiffusionPipeline already has a `{name}`; motion_adapter will not replace it"
            )
        setattr(DiffusionPipeline, name, function)
