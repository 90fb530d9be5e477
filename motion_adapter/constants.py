"""File names, header keys and the format version of the adapter on disk (see DESIGN.md, "The adapter on disk")."""

FORMAT_VERSION = 1

WEIGHTS_NAME = "pytorch_lora_weights.safetensors"  # diffusers' own name, so `pipe.load_lora_weights(folder)` finds it
EMBEDDINGS_NAME = "learned_embeds.safetensors"  # learned token embeddings, one tensor per token
CARD_NAME = "README.md"

DIFFUSERS_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key: the LoraConfig fields, prefixed by component
HEADER_KEY = "motion_adapter"  # this project's header key: kind, tokens, base model, fingerprint, training summary
EMBEDDING_KEY_PREFIX = "token_embeddings."  # token embeddings inside a single-file adapter

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
CARD_MARKER = "<!-- written by motion_adapter: edits here are replaced on the next save -->"

KINDS = ("motion", "subject")
STORAGE_DTYPES = ("float16", "bfloat16", "float32")

TOYWORLD_BASE_ID = "motion-adapter/toyworld"  # the base model id recorded for the embedded tiny world's pipeline
