"""Run by test_two_processes under `accelerate launch --num_processes 2`: train on the tiny pipeline.

Each process writes what it ended with (its rank, a checksum of its LoRA tensors, the learning rate of each
optimizer step) next to the output, so the test can check that both took part and stayed in step (gradients
averaged across processes, the learning-rate schedule advancing once per step). Then a subject from PHOTOS, whose
captions hold the token in some images only (a process may draw none in a step): the checksum of its learned row.

    two_process_train.py CLIPS OUTPUT_DIR PHOTOS
"""

import json
import sys
from pathlib import Path

import torch
from accelerate import PartialState

import motion_adapter as ma
from motion_adapter import testing
from motion_adapter.adapter import get_state

clips, output_dir, photos = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
torch.set_num_threads(1)
pipe = testing.tiny_pipeline()
config = ma.TrainConfig(max_train_steps=4, num_frames=4, height=16, width=16, rank=4, warmup_steps=2,
                        lr_schedule="cosine")
rates = []  # the learning rate of each optimizer step, as AdamW sees it
adamw_step = torch.optim.AdamW.step


def recording_step(self, *args, **kwargs):
    rates.append(self.param_groups[0]["lr"])
    return adamw_step(self, *args, **kwargs)


torch.optim.AdamW.step = recording_step
ma.train_motion(pipe, data=clips, token="pll", output_dir=output_dir, config=config)
torch.optim.AdamW.step = adamw_step
state = PartialState()
lora = get_state(pipe.unet, "pll").values()
checksum = sum(pair.up.double().sum().item() + pair.down.double().sum().item() for pair in lora)
mark = output_dir.parent / f"process-{state.process_index}-of-{state.num_processes}.json"
subject = testing.tiny_pipeline()
ma.train_subject(subject, data=photos, token="<sks>", class_word="dog", output_dir=output_dir.with_name("subject"),
                 config=ma.TrainConfig(max_train_steps=4, num_frames=4, height=16, width=16, rank=4))
row = subject.text_encoder.get_input_embeddings().weight[subject.tokenizer.convert_tokens_to_ids("<sks>")]
mark.write_text(json.dumps({"checksum": checksum, "rates": rates, "row": row.double().sum().item()}))
