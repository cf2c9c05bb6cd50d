"""Beam-search reference as the original BLIP release decoded: transformers 4.26's own generate
on a cross-attending BertLMHeadModel. Run under a Python with torch and transformers==4.26.1
(the separate venv that .ci/run builds; path in BLIP_TF426_PYTHON) by tests/test_decoding.py:

    python tests/tf426_beam_reference.py DIR

DIR holds `config.json` (BertConfig keyword arguments), `weights.npz` (the text decoder's state
dict under BertLMHeadModel's names, "bert.*" and "cls.*"), `inputs.npz` (`image_embeds`
[B, N, C] float32: the vision tower's output; `prefix` [P] int: [DEC] + prompt tokens, no
[SEP]) and `generate.json` (generate's keyword arguments). Writes `DIR/tokens.npy`.

What it reproduces of BLIP's `BLIP_Decoder.generate(sample=False)`: the prompt ids for every
image, the image embeddings repeated per beam along the batch (transformers 4.x expands only the
ids for the beams), an all-ones image attention mask, eos = [SEP], pad = 0. BLIP's own decoder
(models/med.py) passes the image embeddings to every generation step; transformers'
BertLMHeadModel does not, so the subclass below adds them. BLIP's text embeddings have no
token-type table: here it is a single all-zero row.
"""

import json
import os
import sys

import numpy as np
import torch
import transformers


class CrossAttendingDecoder(transformers.BertLMHeadModel):
    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None,
                                      **model_kwargs):
        inputs = super().prepare_inputs_for_generation(
            input_ids, past_key_values, attention_mask, model_kwargs.get("use_cache", True))
        inputs["encoder_hidden_states"] = model_kwargs["encoder_hidden_states"]
        inputs["encoder_attention_mask"] = model_kwargs["encoder_attention_mask"]
        return inputs


def main(directory: str) -> int:
    read = lambda name: json.load(open(os.path.join(directory, name)))
    config = transformers.BertConfig(**read("config.json"), type_vocab_size=1, is_decoder=True,
                                     add_cross_attention=True)
    model = CrossAttendingDecoder(config).eval()
    weights = np.load(os.path.join(directory, "weights.npz"))
    state = {k: torch.from_numpy(weights[k]) for k in weights.files}
    state["bert.embeddings.token_type_embeddings.weight"] = torch.zeros(1, config.hidden_size)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise SystemExit(f"weights do not fit: missing {missing}, unexpected {unexpected}")

    inputs = np.load(os.path.join(directory, "inputs.npz"))
    options = read("generate.json")
    embeds = torch.from_numpy(inputs["image_embeds"])
    batch = embeds.shape[0]
    embeds = embeds.repeat_interleave(options["num_beams"], dim=0)
    ids = torch.from_numpy(inputs["prefix"].astype(np.int64))[None].repeat(batch, 1)
    with torch.no_grad():
        out = model.generate(input_ids=ids, encoder_hidden_states=embeds,
                             encoder_attention_mask=torch.ones(embeds.shape[:-1], dtype=torch.long),
                             **options)
    np.save(os.path.join(directory, "tokens.npy"), out.numpy())
    print(f"transformers {transformers.__version__}, torch {torch.__version__}: "
          f"{tuple(out.shape)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
