"""motion_adapter: teach a text-to-video diffusion model a new motion from a few clips, as a small LoRA adapter.

Importing the package adds the adapter methods (`pipe.load_motion_adapter(...)` and the rest) to diffusers'
pipelines. Public names only; no logic lives here.
"""

from .errors import (
    AdapterFormatError,
    AdapterNotFoundError,
    AdapterStateError,
    IncompatibleAdapterError,
    MotionAdapterError,
    TargetError,
)
from .format import AdapterInfo
from .hub import inspect, push_to_hub, resolve_source
from .pipeline import (
    add_motion_adapter,
    check_prompt,
    delete_motion_adapter,
    disable_motion_adapters,
    enable_motion_adapters,
    fuse_motion_adapters,
    generate,
    learn_token,
    load_motion_adapter,
    motion_adapter_weights,
    register_pipeline_methods,
    save_motion_adapter,
    set_motion_adapters,
    unfuse_motion_adapters,
    unload_motion_adapters,
)
from .targets import TargetSpec, resolve_targets
from .training.config import TrainConfig
from .training.loop import TrainResult, train_motion, train_subject

__version__ = "0.1.0"

register_pipeline_methods()

__all__ = [
    "AdapterFormatError",
    "AdapterInfo",
    "AdapterNotFoundError",
    "AdapterStateError",
    "IncompatibleAdapterError",
    "MotionAdapterError",
    "TargetError",
    "TargetSpec",
    "TrainConfig",
    "TrainResult",
    "add_motion_adapter",
    "check_prompt",
    "delete_motion_adapter",
    "disable_motion_adapters",
    "enable_motion_adapters",
    "fuse_motion_adapters",
    "generate",
    "inspect",
    "learn_token",
    "load_motion_adapter",
    "motion_adapter_weights",
    "push_to_hub",
    "resolve_source",
    "resolve_targets",
    "save_motion_adapter",
    "set_motion_adapters",
    "train_motion",
    "train_subject",
    "unfuse_motion_adapters",
    "unload_motion_adapters",
]
