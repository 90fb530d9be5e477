"""Show which layers each preset selects in a model, and how large a rank-r adapter over them would be.

    python examples/show_targets.py --base cerspense/zeroscope_v2_576w --rank 16
"""

import argparse

from diffusers import DiffusionPipeline

import motion_adapter as ma
from motion_adapter.targets import known_presets


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="cerspense/zeroscope_v2_576w", help="base model id or folder")
    parser.add_argument("--rank", type=int, default=16)
    args = parser.parse_args(argv)

    pipe = DiffusionPipeline.from_pretrained(args.base)
    for preset in known_presets(pipe.unet):
        spec = ma.resolve_targets(pipe, preset)
        modules = dict(pipe.unet.named_modules())
        lora_params = 0
        for name in spec.module_names:
            weight = modules[name].weight
            lora_params += args.rank * (weight.shape[0] + weight[0].numel())
        print(spec.explain())
        print(f"  rank-{args.rank} LoRA: {lora_params / 1e6:.2f} M params, {2 * lora_params / 2**20:.1f} MiB in fp16\n")


if __name__ == "__main__":
    main()
