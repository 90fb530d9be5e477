"""Write and read the adapter on disk: LoRA tensors in diffusers' key form, the header, learned token embeddings.

A folder holds `pytorch_lora_weights.safetensors` (+ `learned_embeds.safetensors`, + a model card); a single
`.safetensors` file holds the same tensors and header, embeddings under `token_embeddings.<token>`. The header
is the single source of truth. Only safetensors is read or written, never pickle. Files are written atomically,
and the header records the sha256 of the embeddings file, so a folder whose save was cut off between its two files
is refused rather than read as a mix of old and new.

Reading also accepts LoRA files made elsewhere: peft or diffusers keys (`lora_A`/`lora_B`, with or without an
adapter name) and the older `lora.down`/`lora.up` form with per-module `alpha`.
"""

import hashlib
import json
import math
import os
import re
import statistics
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save, save_file

from .constants import (
    CARD_MARKER,
    CARD_NAME,
    DIFFUSERS_METADATA_KEY,
    EMBEDDING_KEY_PREFIX,
    EMBEDDINGS_NAME,
    FORMAT_VERSION,
    HEADER_KEY,
    KINDS,
    PICKLE_SUFFIXES,
    STORAGE_DTYPES,
    WEIGHTS_NAME,
)
from .errors import AdapterFormatError, AdapterNotFoundError
from .files import atomic_write_bytes, temporary_sibling

# The header field holding the sha256 of the embeddings file saved with the weights (null: none). Optional: headers
# written before it lack it. A single file holds the same value, so that both forms carry the same header.
EMBEDDINGS_DIGEST = "embeddings_sha256"


@dataclass
class LoraPair:
    """One module's LoRA: delta W = (alpha / rank) * up @ down."""

    down: torch.Tensor  # lora_A: (rank, in) or (rank, in, *kernel)
    up: torch.Tensor  # lora_B: (out, rank) or (out, rank, 1, ...)
    alpha: float

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class AdapterInfo:
    """What an adapter's header says, plus its size on disk (see `inspect`)."""

    kind: str  # "motion", "subject", or "lora" for a plain LoRA file made by another tool
    tokens: list[str]
    prompt_template: str | None
    base_model: str | None
    preset: str | None
    rank: int
    alpha: float
    num_params: int
    file_bytes: int
    format_version: int  # 0 for a file without this project's header
    component: str = "unet"
    base_class: str | None = None
    fingerprint: str | None = None
    learned_tokens: list[str] = field(default_factory=list)
    training: dict | None = None
    path: str = ""

    def header(self) -> dict:
        """The JSON-able header this info is written as (size and path are facts of the file, not header)."""
        fields = asdict(self)
        del fields["file_bytes"], fields["path"]
        return fields

    def __str__(self) -> str:
        rows = [
            ("path", self.path),
            ("kind", self.kind),
            ("tokens", ", ".join(self.tokens) or "-"),
            ("learned tokens", ", ".join(self.learned_tokens) or "-"),
            ("prompt template", self.prompt_template or "-"),
            (
                "base model",
                f"{self.base_model or '-'} ({self.base_class or '?'}, fingerprint {self.fingerprint or '?'})",
            ),
            ("preset", self.preset or "-"),
            ("rank / alpha", f"{self.rank} / {self.alpha:g}"),
            ("parameters", f"{self.num_params:,}"),
            ("bytes", f"{self.file_bytes:,}"),
            ("format version", str(self.format_version)),
        ]
        if self.training:
            rows.append(("training", ", ".join(f"{k}={v}" for k, v in self.training.items())))
        return "\n".join(f"{key:<16} {value}" for key, value in rows)


@dataclass
class AdapterFile:
    """An adapter read from disk: its header and its tensors (float32)."""

    info: AdapterInfo
    modules: dict[str, LoraPair]  # module path in the denoiser -> its LoRA
    embeddings: dict[str, torch.Tensor]  # token -> embedding row


# ---------------------------------------------------------------- writing


def storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    name = str(dtype).removeprefix("torch.")
    if name not in STORAGE_DTYPES:
        raise ValueError(f"dtype={dtype!r} cannot store an adapter; choose one of {', '.join(STORAGE_DTYPES)}")
    return getattr(torch, name)


def write_adapter(
    path: str | os.PathLike,
    info: AdapterInfo,
    modules: dict[str, LoraPair],
    *,
    embeddings: dict[str, torch.Tensor] | None = None,
    dtype: str | torch.dtype = "float16",
    card: Callable[[AdapterInfo], str] | None = None,
) -> Path:
    """Write an adapter as a folder, or as one file when `path` ends in `.safetensors`. Returns the path.

    `card` makes a folder's model card from the header as written (its parameter count and learned tokens filled in).
    """
    path = Path(path)
    dtype = storage_dtype(dtype)
    embeddings = embeddings or {}
    check_kind(info.kind)
    info.learned_tokens = sorted(embeddings)
    info.num_params = sum(pair.down.numel() + pair.up.numel() for pair in modules.values())
    tensors = _lora_tensors(modules, info.component, dtype)
    embeddings = {token: row.detach().to("cpu", dtype).contiguous() for token, row in embeddings.items()}
    embeddings_bytes = save(embeddings, metadata={"format": "pt"}) if embeddings else None
    digest = hashlib.sha256(embeddings_bytes).hexdigest() if embeddings_bytes else None
    metadata = {
        "format": "pt",
        DIFFUSERS_METADATA_KEY: json.dumps(_diffusers_metadata(modules, info), sort_keys=True),
        HEADER_KEY: json.dumps({**info.header(), EMBEDDINGS_DIGEST: digest}, sort_keys=True),
    }
    if path.suffix == ".safetensors":
        tensors.update({EMBEDDING_KEY_PREFIX + token: row for token, row in embeddings.items()})
        atomic_save_tensors(tensors, path, metadata)
        return path
    card_text = card(info) if card is not None else None
    path.mkdir(parents=True, exist_ok=True)
    if card_text is not None and _ours(path / CARD_NAME):
        (path / CARD_NAME).unlink()  # a crash below leaves no card rather than one describing the adapter before
    # The weights first: a crash before the embeddings leaves a header whose digest refuses the old embeddings file.
    atomic_save_tensors(tensors, path / WEIGHTS_NAME, metadata)
    if embeddings_bytes:
        atomic_write_bytes(path / EMBEDDINGS_NAME, embeddings_bytes)
    elif (path / EMBEDDINGS_NAME).exists():
        (path / EMBEDDINGS_NAME).unlink()  # a stale file from an earlier save would add tokens this adapter lacks
    if card_text is not None:
        write_card(path / CARD_NAME, card_text)
    return path


def _ours(card_path: Path) -> bool:
    """Whether a model card is there and was written by this library (a user's README is never replaced)."""
    return card_path.exists() and CARD_MARKER in card_path.read_text(encoding="utf-8", errors="replace")


def check_kind(kind: str) -> None:
    """Refuse a kind this library does not write."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; an adapter's kind is one of {', '.join(KINDS)}")


def write_card(path: Path, card: str) -> bool:
    """Write a model card, unless a README that this library did not write is already there. True if written."""
    if path.exists() and not _ours(path):
        return False
    atomic_write_bytes(path, (card if CARD_MARKER in card else f"{card.rstrip()}\n\n{CARD_MARKER}\n").encode())
    return True


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically: nothing, or a complete file, is ever at `path`."""
    with temporary_sibling(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def _lora_tensors(modules: dict[str, LoraPair], component: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, pair in modules.items():
        tensors[f"{component}.{name}.lora_A.weight"] = pair.down.detach().to("cpu", dtype).contiguous()
        tensors[f"{component}.{name}.lora_B.weight"] = pair.up.detach().to("cpu", dtype).contiguous()
    return tensors


def _diffusers_metadata(modules: dict[str, LoraPair], info: AdapterInfo) -> dict:
    """diffusers' `lora_adapter_metadata`: LoraConfig fields prefixed by the component, as its loaders expect."""
    config = {"r": info.rank, "lora_alpha": info.alpha, "target_modules": sorted(modules)}
    rank_pattern = {name: pair.rank for name, pair in modules.items() if pair.rank != info.rank}
    alpha_pattern = {name: pair.alpha for name, pair in modules.items() if pair.alpha != info.alpha}
    if rank_pattern:
        config["rank_pattern"] = rank_pattern
    if alpha_pattern:
        config["alpha_pattern"] = alpha_pattern
    return {f"{info.component}.{key}": value for key, value in config.items()}


# ---------------------------------------------------------------- reading


def adapter_files(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """The weights file and the embeddings file (or None) of a local adapter folder or single file."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise AdapterFormatError(
            f"{path} is a pickle file; motion_adapter reads only safetensors, which cannot run code when loaded. "
            "Convert it with safetensors.torch.save_file(torch.load(path, weights_only=True), 'adapter.safetensors')"
        )
    if path.is_file():
        if path.suffix != ".safetensors":
            raise AdapterFormatError(
                f"{path} is not a .safetensors file; an adapter is a folder or a .safetensors file"
            )
        return path, None
    if not path.is_dir():
        raise AdapterNotFoundError(f"no adapter at {path}: the path does not exist; give an adapter folder or file")
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
        files = [p for p in path.iterdir() if not p.name.startswith(".")]  # not hidden: an interrupted save's temp
        candidates = [p for p in files if p.suffix == ".safetensors" and p.name != EMBEDDINGS_NAME]
        pickles = [p.name for p in files if p.suffix.lower() in PICKLE_SUFFIXES]
        if len(candidates) == 1:
            weights = candidates[0]
        elif pickles:
            raise AdapterFormatError(
                f"{path} holds only pickle weights ({', '.join(pickles)}); motion_adapter reads only safetensors. "
                "Re-save the LoRA with safe_serialization=True"
            )
        else:
            raise AdapterFormatError(f"{path} has no {WEIGHTS_NAME}; is it an adapter folder?")
    embeddings = path / EMBEDDINGS_NAME
    return weights, embeddings if embeddings.is_file() else None


def read_info(path: str | os.PathLike) -> AdapterInfo:
    """Read only the header of an adapter: cheap, no tensors are loaded."""
    weights, embeddings = adapter_files(path)
    metadata, shapes = _read_header(weights)
    header = _header(weights, metadata)
    modules = _group_keys(weights, [key for key in shapes if not key.startswith(EMBEDDING_KEY_PREFIX)])
    ranks = {module: shapes[keys["down"]][0] for module, keys in modules.items() if "down" in keys}
    num_params = sum(
        math.prod(shapes[key]) for keys in modules.values() for part, key in keys.items() if part != "alpha"
    )
    return _info(path, weights, embeddings, header, metadata, ranks, num_params)


def read_adapter(path: str | os.PathLike) -> AdapterFile:
    """Read and validate a whole adapter into float32 tensors; any damage raises AdapterFormatError."""
    weights, embeddings_file = adapter_files(path)
    metadata, _ = _read_header(weights)
    header = _header(weights, metadata)
    tensors = _read_tensors(weights)
    embeddings = {
        k.removeprefix(EMBEDDING_KEY_PREFIX): v for k, v in tensors.items() if k.startswith(EMBEDDING_KEY_PREFIX)
    }
    if embeddings_file is not None:
        embeddings.update(_read_tensors(embeddings_file))
    lora = {k: v for k, v in tensors.items() if not k.startswith(EMBEDDING_KEY_PREFIX)}
    modules = _parse_lora(weights, lora, _alpha_lookup(weights, header, metadata))
    has_alpha = header is not None or "lora_alpha" in _diffusers_config(metadata) or any(
        k.endswith(".alpha") for k in lora
    )
    if not has_alpha:
        warnings.warn(
            f"{weights} records no LoRA alpha (no header, no alpha tensors): it loads at scale 1 (alpha = rank). "
            "If its effect looks too strong or too weak, load it with another weight=",
            stacklevel=3,
        )
    ranks = {name: pair.rank for name, pair in modules.items()}
    num_params = sum(pair.down.numel() + pair.up.numel() for pair in modules.values())
    info = _info(path, weights, embeddings_file, header, metadata, ranks, num_params)
    if info.format_version and sorted(embeddings) != sorted(info.learned_tokens):
        raise AdapterFormatError(
            f"{path}: the header lists learned tokens {info.learned_tokens} but the files hold {sorted(embeddings)}; "
            "the adapter is incomplete, save it again"
        )
    for token, row in embeddings.items():
        if row.ndim != 1:
            raise AdapterFormatError(
                f"{path}: the embedding of token {token!r} has shape {tuple(row.shape)}, not (dim,)"
            )
    return AdapterFile(info=info, modules=modules, embeddings=embeddings)


def _read_header(file: Path) -> tuple[dict[str, str], dict[str, list[int]]]:
    try:
        with safe_open(file, framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise AdapterFormatError(
            f"{file} is damaged or not a safetensors file ({error}); download or save it again"
        ) from None
    return metadata, shapes


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(file, framework="pt") as handle:
            return {key: handle.get_tensor(key).float() for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise AdapterFormatError(
            f"{file} is damaged or not a safetensors file ({error}); download or save it again"
        ) from None


_LORA_KEY = re.compile(
    r"^(?:(?P<component>unet|transformer)\.)?(?:base_model\.model\.)?(?P<module>.+?)\."
    r"(?:(?P<part>lora_A|lora_B)(?:\.(?P<adapter>[^.]+))?\.weight|lora\.(?P<old>down|up)\.weight|(?P<alpha>alpha))$"
)


def _split_key(file: Path, key: str) -> tuple[str, str, str | None]:
    """(module path, "down" | "up" | "alpha", peft's adapter name or None) of one tensor key, in any accepted form."""
    if key.startswith(("text_encoder.", "text_encoder_2.")):
        raise AdapterFormatError(
            f"{file} holds text-encoder LoRA weights ({key}); motion_adapter adapts only the denoiser"
        )
    match = _LORA_KEY.match(key)
    if match is None:
        raise AdapterFormatError(f"{file}: tensor {key!r} is not a LoRA weight of a known key form")
    part = match["part"] or match["old"] or "alpha"
    return match["module"], {"lora_A": "down", "lora_B": "up"}.get(part, part), match["adapter"]


def _group_keys(file: Path, keys: list[str]) -> dict[str, dict[str, str]]:
    """module path -> {"down" | "up" | "alpha": tensor key}; refuses a file of several adapters, or a tensor twice."""
    split = [(key, *_split_key(file, key)) for key in keys]
    first_module = {}  # peft's adapter name -> the first module it holds
    for _, module, _, adapter in split:
        if adapter is not None:
            first_module.setdefault(adapter, module)
    if len(first_module) > 1:
        found = ", ".join(f"{adapter!r} on {module}" for adapter, module in first_module.items())
        raise AdapterFormatError(
            f"{file} holds {len(first_module)} LoRA adapters ({found}); motion_adapter reads one adapter per file. "
            "Save each adapter to its own file, e.g. get_peft_model_state_dict(model, adapter_name=...)"
        )
    modules: dict[str, dict[str, str]] = {}
    for key, module, part, _ in split:
        if part in modules.setdefault(module, {}):
            raise AdapterFormatError(
                f"{file}: module {module} has two {part} tensors ({modules[module][part]!r} and {key!r}), in two "
                "key forms; keep one of them"
            )
        modules[module][part] = key
    return modules


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_optional_text(value) -> bool:
    return value is None or isinstance(value, str)


def _is_text_list(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


# What each header field may hold: a check, and the words an error uses for it. Fields not listed are ignored.
_HEADER_FIELDS = {
    "format_version": (_is_int, "an integer"),
    "kind": (lambda value: value in KINDS, f"one of {', '.join(KINDS)}"),
    "tokens": (_is_text_list, "a list of strings"),
    "learned_tokens": (_is_text_list, "a list of strings"),
    "prompt_template": (_is_optional_text, "a string or null"),
    "base_model": (_is_optional_text, "a string or null"),
    "base_class": (_is_optional_text, "a string or null"),
    "fingerprint": (_is_optional_text, "a string or null"),
    "preset": (_is_optional_text, "a string or null"),
    "component": (lambda value: isinstance(value, str), "a string"),
    "rank": (lambda value: _is_int(value) and value > 0, "a positive integer"),
    "alpha": (lambda value: (_is_int(value) or isinstance(value, float)) and math.isfinite(value), "a finite number"),
    "num_params": (lambda value: _is_int(value) and value >= 0, "an integer >= 0"),
    "training": (lambda value: value is None or isinstance(value, dict), "an object or null"),
    EMBEDDINGS_DIGEST: (_is_optional_text, "a string or null"),
}


def _header(file: Path, metadata: dict[str, str]) -> dict | None:
    """This project's header, its fields checked; None for a file without one."""
    raw = metadata.get(HEADER_KEY)
    if raw is None:
        return None
    try:
        header = json.loads(raw)
    except ValueError as error:
        raise AdapterFormatError(
            f"{file}: the {HEADER_KEY!r} header is not valid JSON ({error}); save the adapter again"
        ) from None
    if not isinstance(header, dict) or "format_version" not in header:
        raise AdapterFormatError(
            f"{file}: the {HEADER_KEY!r} header is not an object with a format_version; save the adapter again"
        )
    _check_fields(file, header, ["format_version"])
    if header["format_version"] > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{file} uses adapter format version {header['format_version']}, newer than this motion_adapter reads "
            f"({FORMAT_VERSION}); upgrade with `pip install -U motion-adapter`"
        )
    _check_fields(file, header, _HEADER_FIELDS)
    return header


def _check_fields(file: Path, header: dict, names) -> None:
    for name in names:
        check, expected = _HEADER_FIELDS[name]
        if name in header and not check(header[name]):
            raise AdapterFormatError(
                f"{file}: the {HEADER_KEY!r} header's field {name!r} is {header[name]!r:.80}, not {expected}; "
                "save the adapter again"
            )


def _diffusers_config(metadata: dict[str, str]) -> dict:
    """diffusers' LoraConfig fields from the header, without their component prefix ({} when absent)."""
    try:
        config = json.loads(metadata.get(DIFFUSERS_METADATA_KEY) or "{}")
    except ValueError:
        return {}
    return {key.split(".", 1)[-1]: value for key, value in config.items()}


def _alpha_lookup(file: Path, header: dict | None, metadata: dict[str, str]):
    """A function (module, rank) -> alpha giving the scale alpha / rank that peft gives the module: the header's
    `alpha_pattern` or global alpha, times sqrt(rank) under `use_rslora`; a file without one gets alpha = rank."""
    config = _diffusers_config(metadata)
    pattern = config.get("alpha_pattern") or {}
    regexes = _pattern_regexes(file, pattern)
    default = header.get("alpha") if header is not None else config.get("lora_alpha")  # a header without: refused later
    rslora = bool(config.get("use_rslora"))

    def alpha(module: str, rank: int) -> float:
        # peft's get_pattern_key: the first key matching the end of the path wins; with none, the path itself is a key
        key = next((key for key, regex in regexes.items() if regex.match(module)), module)
        value = pattern.get(key, default)
        if value is None:
            return float(rank)
        return float(value) * math.sqrt(rank) if rslora else float(value)

    return alpha


def _pattern_regexes(file: Path, pattern) -> dict[str, re.Pattern]:
    """peft's `alpha_pattern` keys, each compiled as the regex peft matches the end of a module path with."""
    if not isinstance(pattern, dict) or not all(_is_int(v) or isinstance(v, float) for v in pattern.values()):
        raise AdapterFormatError(
            f"{file}: the {DIFFUSERS_METADATA_KEY!r} header's alpha_pattern is {pattern!r:.80}, not an object of "
            "numbers; save the LoRA again"
        )
    try:
        return {key: re.compile(rf"(.*\.)?({key})$") for key in pattern}
    except re.error as error:
        raise AdapterFormatError(
            f"{file}: the {DIFFUSERS_METADATA_KEY!r} header's alpha_pattern holds an invalid regex ({error}); "
            "fix the pattern or save the LoRA again"
        ) from None


def _parse_lora(file: Path, tensors: dict[str, torch.Tensor], alpha_of) -> dict[str, LoraPair]:
    """Group tensors into one LoraPair per module and check that each pair is whole and finite."""
    modules = {}
    for name, keys in sorted(_group_keys(file, list(tensors)).items()):
        found = {part: tensors[key] for part, key in keys.items()}
        if "down" not in found or "up" not in found:
            missing = "lora_A (down)" if "down" not in found else "lora_B (up)"
            raise AdapterFormatError(f"{file}: module {name} has no {missing} tensor; the file is incomplete")
        down, up = found["down"], found["up"]
        if down.dim() < 2 or up.dim() < 2:
            dims = min(down.dim(), up.dim())
            raise AdapterFormatError(f"{file}: module {name} has a LoRA tensor of {dims} dimension; a factor has 2+")
        if up.shape[1] != down.shape[0]:
            raise AdapterFormatError(
                f"{file}: module {name} has lora_A of shape {tuple(down.shape)} and lora_B of shape "
                f"{tuple(up.shape)}, whose ranks disagree"
            )
        if not (torch.isfinite(down).all() and torch.isfinite(up).all()):
            raise AdapterFormatError(f"{file}: module {name} holds NaN or infinite values")
        alpha = float(found["alpha"]) if "alpha" in found else alpha_of(name, down.shape[0])
        modules[name] = LoraPair(down=down, up=up, alpha=alpha)
    if not modules:
        raise AdapterFormatError(f"{file} holds no LoRA tensors")
    return modules


def _info(
    path, weights: Path, embeddings: Path | None, header: dict | None, metadata, ranks: dict[str, int], num_params: int
) -> AdapterInfo:
    """The AdapterInfo from this project's header (`_header`), or from what a foreign file's tensors say."""
    file_bytes = weights.stat().st_size + (embeddings.stat().st_size if embeddings else 0)
    if header is not None and EMBEDDINGS_DIGEST in header and Path(path).is_dir():
        _check_embeddings(Path(path), weights, embeddings, header[EMBEDDINGS_DIGEST])
    if header is not None:
        known = set(AdapterInfo.__dataclass_fields__) - {"file_bytes", "path"}
        fields = {key: value for key, value in header.items() if key in known}
        try:
            return AdapterInfo(**fields, file_bytes=file_bytes, path=str(path))
        except TypeError as error:
            raise AdapterFormatError(
                f"{weights}: the {HEADER_KEY!r} header lacks a field ({error}); save it again"
            ) from None
    if not ranks:
        raise AdapterFormatError(f"{weights} holds no LoRA tensors")
    rank = statistics.mode(ranks.values())
    config = _diffusers_config(metadata)
    return AdapterInfo(
        kind="lora",
        tokens=[],
        prompt_template=None,
        base_model=None,
        preset=None,
        rank=rank,
        alpha=float(config.get("lora_alpha", rank)),
        num_params=num_params,
        file_bytes=file_bytes,
        format_version=0,
        path=str(path),
    )


def _check_embeddings(folder: Path, weights: Path, embeddings: Path | None, digest: str | None) -> None:
    """Refuse a folder whose embeddings file is not the one saved with its weights (a save cut off between them)."""
    found = hashlib.sha256(embeddings.read_bytes()).hexdigest() if embeddings is not None else None
    if found != digest:
        raise AdapterFormatError(
            f"{folder}: {EMBEDDINGS_NAME} is not the file saved with {weights.name} (a save was interrupted, or a "
            "file was replaced or deleted); save the adapter again"
        )
