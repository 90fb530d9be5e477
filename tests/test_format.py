import json

import numpy as np
import pytest
import torch
from diffusers import AnimateDiffPipeline
from peft import LoraConfig, inject_adapter_in_model
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

import motion_adapter as ma
from motion_adapter import format as fmt
from motion_adapter.adapter import lora_layers
from motion_adapter.constants import CARD_MARKER, DIFFUSERS_METADATA_KEY, FORMAT_VERSION, HEADER_KEY, WEIGHTS_NAME
from motion_adapter.testing import generate, tiny_animatediff_pipeline, tiny_pipeline

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


def test_the_cards_snippet_runs_as_written_with_quotes_in_its_prompt(tmp_path):
    pipe = tiny_pipeline()
    ma.add_motion_adapter(pipe, "pll", rank=4, token="pll", prompt_template='a dog doing the "pll" dance')
    folder = ma.save_motion_adapter(pipe, "pll", tmp_path / "pll")
    snippet = (folder / "README.md").read_text().split("```python\n")[1].split("```")[0]
    compile(snippet, "card", "exec")
    assert 'pipe("a dog doing the \\"pll\\" dance", num_frames=16)' in snippet


def test_a_users_readme_is_never_overwritten(tmp_path):
    folder = tmp_path / "pll"
    folder.mkdir()
    (folder / "README.md").write_text("my own notes")
    make_adapter(folder)
    assert (folder / "README.md").read_text() == "my own notes"


def test_a_save_that_fails_leaves_no_card_describing_the_adapter_it_did_not_write(tmp_path, monkeypatch):
    folder = make_adapter(tmp_path / "pll", rank=4)

    def disk_full(tensors, filename, metadata=None):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fmt, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        make_adapter(folder, rank=8)
    assert ma.inspect(folder).rank == 4 and not (folder / "README.md").exists()


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


@pytest.mark.parametrize(
    "config",
    [
        {"alpha_pattern": {"to_v": 2}},  # a key is matched against the end of the module path
        {"alpha_pattern": {r"motion_modules\.\d+\.transformer_blocks\.0\.attn1\.to_v": 2, "to_v": 16}},  # 1st wins
        {"use_rslora": True, "rank_pattern": {"to_k": 2}},  # scale alpha / sqrt(rank)
        {"use_rslora": True, "alpha_pattern": {"attn2.to_v": 3}},
    ],
)
def test_a_foreign_loras_alpha_pattern_and_rslora_load_as_diffusers_loads_them(tmp_path, config):
    made_elsewhere = tiny_animatediff_pipeline()
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["to_k", "to_v"], init_lora_weights=False, **config)
    made_elsewhere.unet.add_adapter(lora)
    state, metadata = get_peft_model_state_dict(made_elsewhere.unet), made_elsewhere.unet.peft_config["default"]
    AnimateDiffPipeline.save_lora_weights(tmp_path / "foreign", unet_lora_layers=state,
                                          unet_lora_adapter_metadata=metadata.to_dict())  # fmt: skip
    scales = {name: layer.scaling["default"] for name, layer in lora_layers(made_elsewhere.unet).items()}
    loaded = fmt.read_adapter(tmp_path / "foreign").modules
    assert {name: pair.alpha / pair.rank for name, pair in loaded.items()} == pytest.approx(scales)
    assert len(set(scales.values())) > 1
    native = tiny_animatediff_pipeline()
    native.load_lora_weights(tmp_path / "foreign", adapter_name="x")
    ours = tiny_animatediff_pipeline()
    ours.load_motion_adapter(tmp_path / "foreign")
    np.testing.assert_allclose(generate(ours), generate(native), atol=1e-5)


def test_an_alpha_pattern_that_is_not_a_regex_of_numbers_is_refused(tmp_path):
    tensors = {"unet.a.to_v.lora_A.weight": torch.ones(2, 3), "unet.a.to_v.lora_B.weight": torch.ones(5, 2)}
    for pattern, message in [({"to_v(": 2}, "invalid regex"), ({"to_v": "2"}, "not an object of numbers")]:
        metadata = {DIFFUSERS_METADATA_KEY: json.dumps({"unet.lora_alpha": 8, "unet.alpha_pattern": pattern})}
        save_file(tensors, tmp_path / "bad.safetensors", metadata=metadata)
        with pytest.raises(ma.AdapterFormatError, match=f"bad.safetensors: .*alpha_pattern.*{message}"):
            fmt.read_adapter(tmp_path / "bad.safetensors")


@pytest.mark.filterwarnings("ignore:Already found a `peft_config`:UserWarning")
def test_a_file_holding_two_peft_adapters_is_refused(tmp_path):
    unet = tiny_pipeline().unet
    for name in ("one", "two"):
        inject_adapter_in_model(LoraConfig(r=2, target_modules=["to_q"]), unet, adapter_name=name)
    save_file({key: value for key, value in unet.state_dict().items() if ".lora_" in key}, tmp_path / "two.safetensors")
    message = (
        r"two.safetensors holds 2 LoRA adapters \('one' on (\S+\.to_q), 'two' on \1\); .*one adapter per file.*"
        r"get_peft_model_state_dict\(model, adapter_name=\.\.\.\)"
    )
    for read in (ma.inspect, fmt.read_adapter):
        with pytest.raises(ma.AdapterFormatError, match=message):
            read(tmp_path / "two.safetensors")


def test_a_module_in_two_key_forms_is_refused(tmp_path):
    tensors = {"a.lora.down.weight": torch.ones(2, 3), "a.lora.up.weight": torch.ones(5, 2),
               "unet.a.lora_A.weight": torch.zeros(2, 3), "unet.a.lora_B.weight": torch.zeros(5, 2)}  # fmt: skip
    save_file(tensors, tmp_path / "mixed.safetensors")
    with pytest.raises(ma.AdapterFormatError, match=r"mixed.safetensors: module a has two down tensors"):
        fmt.read_adapter(tmp_path / "mixed.safetensors")
