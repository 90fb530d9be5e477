import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import motion_adapter as ma
from motion_adapter import format as fmt
from motion_adapter.constants import CARD_MARKER, DIFFUSERS_METADATA_KEY, FORMAT_VERSION, HEADER_KEY, WEIGHTS_NAME
from motion_adapter.testing import tiny_pipeline

from .conftest import make_adapter


def _header(file):
    with safe_open(file, framework="pt") as handle:
        return handle.metadata(), {key: handle.get_tensor(key) for key in handle.keys()}


def test_folder_layout_keys_and_header(tmp_path):
    folder = make_adapter(tmp_path / "pll", dtype="float16")
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", WEIGHTS_NAME]
    metadata, tensors = _header(folder / WEIGHTS_NAME)
    assert all(key.startswith("unet.") and (".lora_A." in key or ".lora_B." in key) for key in tensors)
    assert all(t.dtype == torch.float16 for t in tensors.values())
    header = json.loads(metadata[HEADER_KEY])
    assert header["kind"] == "motion" and header["tokens"] == ["pll"] and header["preset"] == "motion"
    assert header["format_version"] == FORMAT_VERSION and header["base_class"] == "UNet3DConditionModel"
    assert header["rank"] == 4 and header["fingerprint"]
    diffusers_meta = json.loads(metadata[DIFFUSERS_METADATA_KEY])
    assert diffusers_meta["unet.r"] == 4 and diffusers_meta["unet.lora_alpha"] == 4
    assert len(diffusers_meta["unet.target_modules"]) == len(tensors) // 2


def test_dtype_option(tmp_path):
    _, tensors = _header(make_adapter(tmp_path / "a", dtype="bfloat16") / WEIGHTS_NAME)
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    with pytest.raises(ValueError, match="float16, bfloat16, float32"):
        make_adapter(tmp_path / "b", dtype="int8")


def test_single_file_holds_the_same(tmp_path):
    pipe = tiny_pipeline()
    ma.add_motion_adapter(pipe, "pll", rank=4, alpha=4, token="pll")
    folder = ma.save_motion_adapter(pipe, "pll", tmp_path / "pll")
    single = ma.save_motion_adapter(pipe, "pll", tmp_path / "pll.safetensors")
    folder_meta, folder_tensors = _header(folder / WEIGHTS_NAME)
    single_meta, single_tensors = _header(single)
    assert folder_meta == single_meta
    assert folder_tensors.keys() == single_tensors.keys()
    assert all(torch.equal(folder_tensors[k], single_tensors[k]) for k in folder_tensors)


def test_inspect_reads_header_without_tensors(tmp_path):
    folder = make_adapter(tmp_path / "pll")
    info = ma.inspect(folder)
    assert (info.kind, info.tokens, info.preset, info.rank, info.alpha) == ("motion", ["pll"], "motion", 4, 4.0)
    assert info.file_bytes == (folder / WEIGHTS_NAME).stat().st_size
    assert info.num_params == sum(t.numel() for t in _header(folder / WEIGHTS_NAME)[1].values())
    text = str(info)
    for word in ("kind", "tokens", "base model", "preset", "rank", "parameters", "bytes"):
        assert word in text


def test_model_card_shows_the_header(tmp_path):
    folder = make_adapter(tmp_path / "pll")
    card, info = (folder / "README.md").read_text(), ma.inspect(folder)
    assert card.startswith("---\n") and "library_name: motion-adapter" in card and "license" not in card
    for tag in ("text-to-video", "lora", "motion-customization"):
        assert f"- {tag}" in card
    assert "`pll`" in card and CARD_MARKER in card
    assert info.num_params > 0 and f"rank 4, alpha 4, {info.num_params:,} parameters" in card
    assert f'pipe.load_motion_adapter("{folder}")' in card


def test_a_users_readme_is_never_overwritten(tmp_path):
    folder = tmp_path / "pll"
    folder.mkdir()
    (folder / "README.md").write_text("my own notes")
    make_adapter(folder)
    assert (folder / "README.md").read_text() == "my own notes"


def test_a_crash_while_writing_leaves_no_file(tmp_path, monkeypatch):
    def crash(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(fmt, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        make_adapter(tmp_path / "pll")
    leftovers = [p.name for p in (tmp_path / "pll").iterdir()] if (tmp_path / "pll").exists() else []
    assert WEIGHTS_NAME not in leftovers and not any(".tmp" in name for name in leftovers)


@pytest.mark.parametrize("suffix", [".bin", ".pt", ".ckpt"])
def test_pickle_files_are_refused(tmp_path, suffix):
    path = tmp_path / f"adapter{suffix}"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(ma.AdapterFormatError, match="pickle"):
        fmt.read_adapter(path)


def test_folder_with_only_pickle_weights_is_refused(tmp_path):
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_lora_weights.bin")
    with pytest.raises(ma.AdapterFormatError, match="only pickle"):
        fmt.read_adapter(tmp_path)


def test_corrupt_and_truncated_files_are_refused(tmp_path):
    folder = make_adapter(tmp_path / "pll")
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(ma.AdapterFormatError, match="damaged"):
        fmt.read_adapter(folder)
    (folder / WEIGHTS_NAME).write_bytes(b"\x00" * 64)
    with pytest.raises(ma.AdapterFormatError, match="damaged"):
        ma.inspect(folder)


def test_unknown_format_version_is_refused(tmp_path):
    folder = make_adapter(tmp_path / "pll")
    metadata, tensors = _header(folder / WEIGHTS_NAME)
    header = json.loads(metadata[HEADER_KEY])
    header["format_version"] = FORMAT_VERSION + 1
    save_file(tensors, folder / WEIGHTS_NAME, metadata={**metadata, HEADER_KEY: json.dumps(header)})
    with pytest.raises(ma.AdapterFormatError, match="upgrade"):
        fmt.read_adapter(folder)


def test_incomplete_pairs_and_text_encoder_keys_are_refused(tmp_path):
    save_file({"unet.a.lora_A.weight": torch.zeros(2, 3)}, tmp_path / "half.safetensors")
    with pytest.raises(ma.AdapterFormatError, match="no lora_B"):
        fmt.read_adapter(tmp_path / "half.safetensors")
    save_file({"text_encoder.x.lora_A.weight": torch.zeros(2, 3)}, tmp_path / "te.safetensors")
    with pytest.raises(ma.AdapterFormatError, match="text-encoder"):
        fmt.read_adapter(tmp_path / "te.safetensors")



def test_a_header_without_alpha_and_flat_tensors_are_refused(tmp_path):
    folder = make_adapter(tmp_path / "pll")
    metadata, tensors = _header(folder / WEIGHTS_NAME)
    header = json.loads(metadata[HEADER_KEY])
    del header["alpha"]
    save_file(tensors, folder / WEIGHTS_NAME, metadata={**metadata, HEADER_KEY: json.dumps(header)})
    with pytest.raises(ma.AdapterFormatError, match="lacks a field"):
        fmt.read_adapter(folder)
    save_file({"unet.a.lora_A.weight": torch.zeros(3), "unet.a.lora_B.weight": torch.zeros(2, 3)},
              tmp_path / "flat.safetensors")  # fmt: skip
    with pytest.raises(ma.AdapterFormatError, match="module a has a LoRA tensor of 1 dimension"):
        fmt.read_adapter(tmp_path / "flat.safetensors")

def test_foreign_key_forms_are_read(tmp_path):
    tensors = {
        "a.b.lora.down.weight": torch.ones(2, 3),
        "a.b.lora.up.weight": torch.ones(5, 2),
        "a.b.alpha": torch.tensor(1.0),
        "unet.c.lora_A.default.weight": torch.ones(4, 3),
        "unet.c.lora_B.default.weight": torch.ones(5, 4),
    }
    save_file(tensors, tmp_path / "foreign.safetensors")
    loaded = fmt.read_adapter(tmp_path / "foreign.safetensors")
    assert loaded.modules["a.b"].alpha == 1.0 and loaded.modules["a.b"].rank == 2
    assert loaded.modules["c"].alpha == 4.0  # no alpha anywhere: scale 1
    assert loaded.info.kind == "lora" and loaded.info.format_version == 0


def _subject_adapter(path, row):
    """A one-module subject adapter whose learned token `<sks>` has the embedding `row`."""
    info = fmt.AdapterInfo(kind="subject", tokens=["<sks>"], prompt_template=None, base_model=None, preset=None,
                           rank=2, alpha=2.0, num_params=0, file_bytes=0, format_version=FORMAT_VERSION)  # fmt: skip
    modules = {"a": fmt.LoraPair(down=torch.ones(2, 3), up=torch.ones(5, 2), alpha=2.0)}
    return fmt.write_adapter(path, info, modules, embeddings={"<sks>": row}, dtype="float32")


def test_an_interrupted_saves_temporary_file_is_not_read_as_the_adapter(tmp_path):
    """A killed save leaves `.pytorch_lora_weights.<random>.tmp.safetensors`: hidden files are never the weights."""
    folder = make_adapter(tmp_path / "pll")
    (folder / WEIGHTS_NAME).rename(folder / ".pytorch_lora_weights.5f3a9c1e.tmp.safetensors")
    for read in (ma.inspect, fmt.read_adapter):
        with pytest.raises(ma.AdapterFormatError, match=f"has no {WEIGHTS_NAME}; is it an adapter folder"):
            read(folder)


def _drop_embeddings_digest(folder):
    """Rewrite the header as adapters saved before the embeddings digest was recorded."""
    metadata, tensors = _header(folder / WEIGHTS_NAME)
    header = json.loads(metadata[HEADER_KEY])
    assert len(header.pop(fmt.EMBEDDINGS_DIGEST)) == 64
    save_file(tensors, folder / WEIGHTS_NAME, metadata={**metadata, HEADER_KEY: json.dumps(header)})


@pytest.mark.parametrize("old", ["with digest", "without digest"])
def test_a_resave_cut_off_between_weights_and_embeddings_is_refused(tmp_path, monkeypatch, old):
    folder = _subject_adapter(tmp_path / "dog", torch.zeros(4))
    if old == "without digest":
        _drop_embeddings_digest(folder)
    write = fmt.atomic_write_bytes

    def crash_at_the_embeddings(path, data):
        if path.name == "learned_embeds.safetensors":
            raise KeyboardInterrupt
        write(path, data)

    monkeypatch.setattr(fmt, "atomic_write_bytes", crash_at_the_embeddings)
    with pytest.raises(KeyboardInterrupt):
        _subject_adapter(folder, torch.ones(4))  # new weights written, the old embeddings still there
    for read in (ma.inspect, fmt.read_adapter):
        with pytest.raises(ma.AdapterFormatError, match="learned_embeds.safetensors is not the file saved with"):
            read(folder)
    monkeypatch.setattr(fmt, "atomic_write_bytes", write)
    _subject_adapter(folder, torch.ones(4))
    assert torch.equal(fmt.read_adapter(folder).embeddings["<sks>"], torch.ones(4))


def test_a_missing_or_stray_embeddings_file_is_refused(tmp_path):
    folder = _subject_adapter(tmp_path / "dog", torch.zeros(4))
    embeddings = (folder / "learned_embeds.safetensors").read_bytes()
    (folder / "learned_embeds.safetensors").unlink()
    with pytest.raises(ma.AdapterFormatError, match="is not the file saved with"):
        ma.inspect(folder)
    folder = make_adapter(tmp_path / "pll")  # saved without embeddings
    (folder / "learned_embeds.safetensors").write_bytes(embeddings)
    with pytest.raises(ma.AdapterFormatError, match="is not the file saved with"):
        ma.inspect(folder)


def test_a_header_without_the_embeddings_digest_still_loads(tmp_path):
    """Adapters saved before the digest was recorded read as they did."""
    folder = _subject_adapter(tmp_path / "dog", torch.ones(4))
    _drop_embeddings_digest(folder)
    assert torch.equal(fmt.read_adapter(folder).embeddings["<sks>"], torch.ones(4))


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("alpha", None, "a finite number"),
        ("rank", "x", "a positive integer"),
        ("tokens", "pll", "a list of strings"),
        ("kind", "banana", "one of motion, subject"),
        ("format_version", "1", "an integer"),
        ("training", [1], "an object or null"),
    ],
)
def test_header_fields_of_the_wrong_type_are_refused(tmp_path, field, value, expected):
    folder = make_adapter(tmp_path / "pll")
    metadata, tensors = _header(folder / WEIGHTS_NAME)
    header = {**json.loads(metadata[HEADER_KEY]), field: value}
    save_file(tensors, folder / WEIGHTS_NAME, metadata={**metadata, HEADER_KEY: json.dumps(header)})
    message = f"{WEIGHTS_NAME}: .* header's field '{field}' is .*, not {expected}; save the adapter again"
    for read in (ma.inspect, fmt.read_adapter):
        with pytest.raises(ma.AdapterFormatError, match=message):
            read(folder)
