"""Which layers a customization touches: a table of architectures, and `resolve_targets` that reads it.

Each architecture is a row: the denoiser classes it covers, the pipeline attribute that holds the denoiser, the
regex of each layer role (first match wins), and the presets as lists of roles. A new video model is a new row.
Only leaves that can carry a LoRA (Linear, Conv1d/2d/3d) are ever selected: a TemporalConvLayer's GroupNorm is not.
"""

import hashlib
import re
from dataclasses import dataclass, field

from torch import nn

from .errors import TargetError

LORA_CAPABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
ROLE_OTHER = "other"  # a module a user regex selected that no role of the table describes


@dataclass(frozen=True)
class Architecture:
    """One row of the target table."""

    name: str
    class_names: tuple[str, ...]
    component: str  # the pipeline attribute holding the denoiser: "unet" or "transformer"
    roles: dict[str, str]  # role -> regex searched in a module path; the first role that matches wins
    presets: dict[str, tuple[str, ...]]  # preset -> the roles it selects
    temporal_blocks: tuple[str, ...] = ()  # classes of the blocks that mix frames: bypassed to train on images
    unadaptable: str | None = None  # regex of modules that cannot carry a LoRA here: never selected, even by a regex
    text_per_frame: bool = False  # the denoiser wants the text embeddings repeated for every frame


_SPATIAL_ATTENTION = r"(^|\.)attentions\.\d+\.transformer_blocks\.\d+\."
_SPATIAL_ROLES = {
    "spatial_kv": _SPATIAL_ATTENTION + r"attn2\.to_[kv]$",
    "spatial_attn": _SPATIAL_ATTENTION + r"attn[12]\.(to_q|to_k|to_v|to_out\.0)$",
}
_PRESETS = {
    "motion": ("temporal", "spatial_kv"),  # the paper's
    "temporal": ("temporal",),
    "spatial-kv": ("spatial_kv",),
    "appearance": ("spatial_kv", "spatial_attn"),  # every spatial attention projection
    # The same without the cross-attention k/v (the spatial_kv role matches them first), through which every word of
    # a prompt is read, a motion's token too: for subjects (`train_subject`'s default, with "temporal" on some bases).
    "subject": ("spatial_attn",),
}

ARCHITECTURES = (
    Architecture(
        name="unet3d",  # ModelScope / ZeroScope (TextToVideoSDPipeline)
        class_names=("UNet3DConditionModel",),
        component="unet",
        roles={"temporal": r"(^transformer_in\.|\.temp_attentions\.|\.temp_convs\.)", **_SPATIAL_ROLES},
        presets=_PRESETS,
        temporal_blocks=("TransformerTemporalModel", "TemporalConvLayer"),
    ),
    Architecture(
        name="animatediff",  # AnimateDiffPipeline
        class_names=("UNetMotionModel",),
        component="unet",
        # The motion modules call proj_in / proj_out by keyword (`proj_in(input=x)`), which a peft LoRA layer
        # (forward(x)) rejects; their transformer blocks (temporal attention and feed-forward) carry the motion.
        roles={"temporal": r"\.motion_modules\.\d+\.transformer_blocks\.", **_SPATIAL_ROLES},
        presets=_PRESETS,
        temporal_blocks=("AnimateDiffTransformer3D",),
        unadaptable=r"\.motion_modules\.\d+\.proj_(in|out)$",
        text_per_frame=True,  # as AnimateDiffPipeline repeats prompt embeddings before calling the UNet
    ),
)


@dataclass(frozen=True)
class TargetSpec:
    """The modules a preset or regex selects in one denoiser, grouped by role."""

    model_class: str
    preset: str
    groups: dict[str, list[str]]  # role -> sorted module paths
    num_params: int  # base parameters covered by the selection
    params_by_group: dict[str, int] = field(repr=False)
    module_names: list[str] = field(init=False)

    def __post_init__(self):
        names = sorted(name for names in self.groups.values() for name in names)
        object.__setattr__(self, "module_names", names)

    def role_of(self, module_name: str) -> str:
        """The role (group) a selected module belongs to."""
        for role, names in self.groups.items():
            if module_name in names:
                return role
        raise KeyError(module_name)

    def explain(self) -> str:
        """A small table of what matched: modules and parameters per group."""
        lines = [f"{self.model_class}, preset {self.preset!r}:"]
        for role, names in self.groups.items():
            lines.append(f"  {role:<13} {len(names):>5} modules {self.params_by_group[role] / 1e6:>10.2f} M params")
        lines.append(f"  {'total':<13} {len(self.module_names):>5} modules {self.num_params / 1e6:>10.2f} M params")
        return "\n".join(lines)


def denoiser_of(pipe_or_denoiser) -> nn.Module:
    """The denoiser (UNet or transformer) of a pipeline, or the module itself."""
    if isinstance(pipe_or_denoiser, nn.Module):
        return pipe_or_denoiser
    for component in ("unet", "transformer"):
        module = getattr(pipe_or_denoiser, component, None)
        if isinstance(module, nn.Module):
            return module
    raise TypeError(
        f"{type(pipe_or_denoiser).__name__} has no `unet` or `transformer`: "
        "pass a video diffusion pipeline or its denoiser"
    )


def architecture_of(denoiser: nn.Module) -> Architecture | None:
    """The table row for this denoiser's class, or None when the table does not know it."""
    class_name = type(denoiser).__name__
    return next((arch for arch in ARCHITECTURES if class_name in arch.class_names), None)


def known_presets(denoiser: nn.Module) -> list[str]:
    arch = architecture_of(denoiser)
    return list(arch.presets) if arch else []


def lora_capable_modules(denoiser: nn.Module) -> dict[str, nn.Module]:
    """Every leaf that can carry a LoRA, by path; layers that already carry one count as their base layer. The
    table's `unadaptable` modules of the denoiser's architecture are left out (a LoRA there breaks its forward)."""
    arch = architecture_of(denoiser)
    unadaptable = arch.unadaptable if arch is not None else None
    found = {}
    for name, module in denoiser.named_modules():
        if ".base_layer" in name or ".lora_" in name:
            continue  # the insides of a layer that already carries a LoRA
        if unadaptable and re.search(unadaptable, name):
            continue
        base = getattr(module, "base_layer", module)
        if isinstance(base, LORA_CAPABLE):
            found[name] = base
    return found


def role_of(arch: Architecture | None, module_name: str) -> str:
    """The first role of the table whose regex matches this module path."""
    if arch is not None:
        for role, pattern in arch.roles.items():
            if re.search(pattern, module_name):
                return role
    return ROLE_OTHER


def resolve_targets(pipe_or_denoiser, preset: str = "motion") -> TargetSpec:
    """Resolve a preset name (see the table), presets joined by "+", or a regex into the modules that get a LoRA.

    A regex is searched in each module path (`re.search`); the selection's groups still use the table's roles.
    """
    denoiser = denoiser_of(pipe_or_denoiser)
    arch = architecture_of(denoiser)
    class_name = type(denoiser).__name__
    candidates = lora_capable_modules(denoiser)
    parts = preset.split("+")
    if any(part in arch_.presets for arch_ in ARCHITECTURES for part in parts):  # preset names, not a regex
        if arch is None:
            raise TargetError(f"preset {preset!r} names layers of the table's denoisers; {_presets_hint(denoiser)}")
        unknown = [part for part in parts if part not in arch.presets]
        if unknown:
            raise TargetError(f"no preset {', '.join(map(repr, unknown))} (in {preset!r}); {_presets_hint(denoiser)}")
        wanted = {role for part in parts for role in arch.presets[part]}
        selected = {name: role for name in candidates if (role := role_of(arch, name)) in wanted}
    else:
        try:
            pattern = re.compile(preset)
        except re.error as error:
            raise TargetError(
                f"{preset!r} is neither a preset nor a valid regex ({error}); {_presets_hint(denoiser)}"
            ) from None
        selected = {name: role_of(arch, name) for name in candidates if pattern.search(name)}
    if not selected:
        raise TargetError(
            f"{preset!r} matched 0 LoRA-capable modules (Linear, Conv) in {class_name}; {_presets_hint(denoiser)}"
        )
    role_order = [*(arch.roles if arch else ()), ROLE_OTHER]
    groups: dict[str, list[str]] = {role: [] for role in role_order}
    params: dict[str, int] = dict.fromkeys(role_order, 0)
    for name in sorted(selected):
        role = selected[name]
        groups[role].append(name)
        params[role] += sum(p.numel() for p in candidates[name].parameters())
    groups = {role: names for role, names in groups.items() if names}
    params = {role: params[role] for role in groups}
    return TargetSpec(
        model_class=class_name, preset=preset, groups=groups, num_params=sum(params.values()), params_by_group=params
    )


def _presets_hint(denoiser: nn.Module) -> str:
    presets = known_presets(denoiser)
    if presets:
        return f"presets for {type(denoiser).__name__} are {', '.join(presets)}"
    known = ", ".join(name for arch in ARCHITECTURES for name in arch.class_names)
    return (
        f"{type(denoiser).__name__} is not in the target table (it knows {known}): pass a regex of module paths, "
        "or add a row to motion_adapter/targets.py"
    )


def architecture_fingerprint(denoiser: nn.Module) -> str:
    """A short hash of the denoiser's class and every base parameter's name and shape.

    Two checkpoints of one architecture share it; any change of layers or sizes changes it. What is added beside
    the base is ignored, so a model carrying it has the fingerprint of its base: LoRA layers injected by peft, and
    an IP-Adapter (`pipe.load_ip_adapter`: its attention processors' own weights and its image projection).
    """
    digest = hashlib.sha256(type(denoiser).__name__.encode())
    for name, param in denoiser.named_parameters():
        if ".lora_" in name or ".processor." in name or name.startswith("encoder_hid_proj.image_projection_layers."):
            continue
        digest.update(f"{name.replace('.base_layer', '')}:{tuple(param.shape)};".encode())
    return digest.hexdigest()[:16]


def module_shape(module: nn.Module) -> tuple[int, int, tuple[int, ...]]:
    """(in features or channels, out features or channels, kernel size) of a LoRA-capable leaf."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, ()
    return module.in_channels, module.out_channels, tuple(module.kernel_size)
