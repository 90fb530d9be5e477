"""Sources and the Hugging Face Hub: resolve a folder, a file or a repo id to local files; write the model card.

The only module that imports huggingface_hub. A local path and a Hub repo id go through `resolve_source`, which
returns a local path either way, so everything after it is one code path.
"""

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, ModelCardData, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .constants import CARD_MARKER, CARD_NAME, PICKLE_SUFFIXES, TOYWORLD_BASE_ID
from .errors import AdapterFormatError, AdapterNotFoundError, MotionAdapterError
from .format import AdapterInfo, adapter_files, read_info

CARD_TAGS = ["text-to-video", "lora", "motion-customization", "motion-adapter"]
LIBRARY_NAME = "motion-adapter"
# The root of the HTTP library's errors (httpx's HTTPError, or requests' RequestException in older huggingface_hub),
# found from huggingface_hub's own HTTP error, which derives from it: a refused connection or a timeout is not a
# huggingface_hub error, and the library it comes from has changed between huggingface_hub's versions.
_HTTP_LIBRARY_ERROR = [kind for kind in HfHubHTTPError.__mro__ if kind not in OSError.__mro__][-1]


def resolve_source(
    source: str | os.PathLike,
    *,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local adapter folder or file as it is, or a Hub repo id downloaded (or found in the cache) to a folder.

    Only the `*.safetensors` files and the model card at the repo's root are fetched from the Hub: pickle files
    are never downloaded, nor what a repo keeps in subfolders (checkpoints, optimizer states).
    """
    path = Path(source).expanduser()
    if path.exists():
        return path
    text = str(source)
    looks_local = path.suffix.lower() in (".safetensors", *PICKLE_SUFFIXES) or text.startswith((".", "/", "~"))
    try:
        validate_repo_id(text)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise AdapterNotFoundError(f"no adapter at {text}: the path does not exist (and it is not a Hub repo id)")
    try:
        folder = snapshot_download(
            text,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_patterns=["*.safetensors", CARD_NAME],
            ignore_patterns=["*/*"],
        )
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as error:
        raise AdapterNotFoundError(
            f"{text} is neither a local path nor a Hub repo in the local cache, and the Hub cannot be reached "
            f"(offline: {type(error).__name__}). Check the name, or download it once while online"
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise AdapterNotFoundError(
            f"{text} is neither a local path nor a Hub repo that can be read at revision {revision or 'main'} "
            f"({type(error).__name__}); check the name, the revision, and your access rights"
        ) from None
    if not any(Path(folder).glob("*.safetensors")):
        raise AdapterFormatError(
            f"Hub repo {text} (revision {revision or 'main'}) has no .safetensors file at its root, so no adapter: "
            "motion_adapter reads only safetensors (pickle .bin files are never downloaded). Give the repo that "
            "push_to_hub or save_lora_weights wrote to, or ask its owner for a safetensors copy"
        )
    return Path(folder)


def inspect(
    source: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> AdapterInfo:
    """The header of an adapter folder, a `.safetensors` file or a Hub repo id (fetched as `resolve_source` does)."""
    return read_info(resolve_source(source, revision=revision, cache_dir=cache_dir))


def push_to_hub(
    folder,
    repo_id: str,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    api: HfApi | None = None,
):
    """Upload an adapter folder to a Hub model repo in one commit, with a model card made for that repo.

    The files go through a temporary folder: the adapter's safetensors, its sample animation, and a card
    whose usage snippet names `repo_id`. A README the user wrote (not made by this library) is uploaded as it
    is, never replaced. `token` (else the cached login) is handed to huggingface_hub only: it is never written
    to a file or a message. Returns huggingface_hub's CommitInfo.
    """
    folder = Path(folder)
    info = read_info(folder)  # refuses anything that is not a readable adapter, before any upload
    weights, embeddings = adapter_files(folder)
    with _reaching_the_hub(f"push {folder} to {repo_id}"):
        api = api or HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision is not None and not create_pr:
            api.create_branch(repo_id, branch=revision, exist_ok=True, repo_type="model")
        samples = sorted(p for p in folder.glob("sample.*") if p.is_file())
        with tempfile.TemporaryDirectory() as staging:
            staging = Path(staging)
            for file in [weights, embeddings, *samples]:
                if file is not None:
                    shutil.copyfile(file, staging / file.name)
            readme = folder / CARD_NAME
            if readme.is_file() and CARD_MARKER not in readme.read_text(encoding="utf-8", errors="replace"):
                shutil.copyfile(readme, staging / CARD_NAME)
            else:
                card = model_card(info, source=repo_id, sample=samples[0].name if samples else None,
                                  revision=revision)
                (staging / CARD_NAME).write_text(card, encoding="utf-8")
            return api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=commit_message or f"Upload {info.kind} adapter {', '.join(info.tokens)}".strip(),
                revision=revision,
                create_pr=create_pr,
                repo_type="model",
            )


@contextmanager
def _reaching_the_hub(action: str):
    """Turn huggingface_hub's offline and HTTP errors, and the network's, into one that says what to check."""
    try:
        yield
    except (OfflineModeIsEnabled, HfHubHTTPError, _HTTP_LIBRARY_ERROR) as error:
        raise MotionAdapterError(
            f"could not {action} ({type(error).__name__}: {error}); check the connection, that you are logged in "
            "(`hf auth login`, or token=) with write access to the repo, then try again"
        ) from error


def model_card(info: AdapterInfo, *, source: str, sample: str | None = None, revision: str | None = None) -> str:
    """A Hub model card that only displays what the adapter's header holds.

    `source` is where the usage snippet loads the adapter from (its Hub repo id, or its folder), at `revision` (a
    branch it was pushed to); `sample` is the file name of an animation inside the adapter folder.
    """
    data = ModelCardData(
        base_model=info.base_model if _is_hub_id(info.base_model) and info.base_model != TOYWORLD_BASE_ID else None,
        library_name=LIBRARY_NAME,
        tags=CARD_TAGS + [info.kind],
    )
    token = info.tokens[0] if info.tokens else None
    prompt = info.prompt_template or (f"a bear doing the {token}" if token else "a bear dancing")
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {info.kind} adapter{f' `{token}`' if token else ''}",
        "",
        f"A {info.kind} adapter made with [motion_adapter](https://pypi.org/project/motion-adapter/), "
        f"a LoRA over the `{info.preset}` layers of `{info.base_model or 'its base model'}`.",
        "",
        f"- tokens: {', '.join(f'`{t}`' for t in info.tokens) or 'none'}"
        + (f" (learned embeddings: {', '.join(info.learned_tokens)})" if info.learned_tokens else ""),
        f"- prompt template: `{info.prompt_template}`" if info.prompt_template else "- prompt template: none",
        f"- rank {info.rank}, alpha {info.alpha:g}, {info.num_params:,} parameters",
        f"- base architecture: {info.base_class} (fingerprint `{info.fingerprint}`)",
    ]
    if info.training:
        lines.append("- training: " + ", ".join(f"{key} {value}" for key, value in info.training.items()))
    if sample:
        lines += ["", f"![sample]({sample})"]
    usage = _usage(info.base_model, source, prompt, revision)
    lines += ["", "## Usage", "", "```python", *usage, "```", "", CARD_MARKER, ""]
    return str(ModelCard("\n".join(lines)))


def _usage(base_model: str | None, source: str, prompt: str, revision: str | None) -> list[str]:
    """The card's usage snippet: load the base the adapter was trained on, load the adapter, generate. Values go in
    as string literals (a prompt with quotes, a Windows path), so the snippet runs as written."""
    if base_model == TOYWORLD_BASE_ID:
        load_base = [
            "from motion_adapter import toyworld",
            "",
            "pipe = toyworld.load_pipeline()  # the embedded tiny world",
        ]
        frames = 8
    else:
        base = base_model if _is_hub_id(base_model) else "<id or folder of the base model>"
        load_base = [
            "import torch",
            "from diffusers import DiffusionPipeline",
            "import motion_adapter  # adds pipe.load_motion_adapter",
            "",
            f'pipe = DiffusionPipeline.from_pretrained({json.dumps(base)}, torch_dtype=torch.float16).to("cuda")',
        ]
        frames = 16
    return [
        *load_base,
        f"pipe.load_motion_adapter({json.dumps(source)}{f', revision={json.dumps(revision)}' if revision else ''})",
        f"frames = pipe({json.dumps(prompt)}, num_frames={frames}).frames[0]",
    ]


def _is_hub_id(name: str | None) -> bool:
    if not name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name).exists()
