"""PyTorch re-statement of the original BLIP's NLVR2 model (salesforce/BLIP 056a169:
models/blip_nlvr.py and models/nlvr_encoder.py) for the parity test, in evaluation mode.

The text encoder is re-stated from nlvr_encoder.py with the original's module names, so its
state_dict keys are those of the released model_base_nlvr.pth (`text_encoder.encoder.layer.N.
crossattention.self0.query.weight`, `...output.dense1.weight`, `...output.merge_layer.weight`,
`cls_head.0.weight`, ...). What it keeps of the original:
- BertSelfAttention: query from the text, key/value from the image (width encoder_width),
  scores / sqrt(head dim) plus the additive mask (1 - mask) * -10000, softmax;
- BertSelfOutput(twin, merge): dense0/dense1 per branch; below layer 6 (here `merge_from`) the
  mean of the two, from it on merge_layer(cat) without activation; then LayerNorm(h + input);
- BertLayer: self-attention, the two-branch cross-attention, intermediate (GELU) and output;
- BLIP_NLVR.forward: one ViT pass over cat([image0, image1]), split, [ENC] first, the
  classifier Linear -> ReLU -> Linear on token 0.
The ViT is transformers' BlipVisionModel (the same computation as the original's
VisionTransformer, checked by test_parity_hf); its keys are renamed to the original layout by
`original_state_dict`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class SelfAttention(nn.Module):
    def __init__(self, hidden: int, kv_width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x, context, bias):
        split = lambda t: t.view(t.shape[0], t.shape[1], self.heads, -1).permute(0, 2, 1, 3)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(context)), split(self.value(context))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias
        out = scores.softmax(-1) @ v
        return out.permute(0, 2, 1, 3).reshape(x.shape[0], x.shape[1], -1)


class SelfOutput(nn.Module):
    def __init__(self, hidden: int, eps: float, twin: bool = False, merge: bool = False):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        if twin:
            self.dense0 = nn.Linear(hidden, hidden)
            self.dense1 = nn.Linear(hidden, hidden)
        else:
            self.dense = nn.Linear(hidden, hidden)
        self.merge = merge
        if merge:
            self.merge_layer = nn.Linear(2 * hidden, hidden)

    def forward(self, h, x):
        if isinstance(h, list):
            h0, h1 = self.dense0(h[0]), self.dense1(h[1])
            h = self.merge_layer(torch.cat([h0, h1], -1)) if self.merge else (h0 + h1) / 2
        else:
            h = self.dense(h)
        return self.LayerNorm(h + x)


class Attention(nn.Module):
    def __init__(self, hidden: int, kv_width: int, heads: int, eps: float, cross: bool = False,
                 merge: bool = False):
        super().__init__()
        if cross:
            self.self0 = SelfAttention(hidden, kv_width, heads)
            self.self1 = SelfAttention(hidden, kv_width, heads)
        else:
            self.self = SelfAttention(hidden, hidden, heads)
        self.output = SelfOutput(hidden, eps, twin=cross, merge=merge)

    def forward(self, x, bias, contexts=None, context_biases=None):
        if contexts is not None:
            return self.output([self.self0(x, contexts[0], context_biases[0]),
                                self.self1(x, contexts[1], context_biases[1])], x)
        return self.output(self.self(x, x, bias), x)


class Dense(nn.Module):  # the original's BertIntermediate / BertOutput naming
    def __init__(self, d_in: int, d_out: int, eps: float | None = None):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)
        if eps is not None:
            self.LayerNorm = nn.LayerNorm(d_out, eps=eps)


class Layer(nn.Module):
    def __init__(self, hidden, kv_width, heads, ffn, eps, merge):
        super().__init__()
        self.attention = Attention(hidden, hidden, heads, eps)
        self.crossattention = Attention(hidden, kv_width, heads, eps, cross=True, merge=merge)
        self.intermediate = Dense(hidden, ffn)
        self.output = Dense(ffn, hidden, eps)

    def forward(self, x, bias, contexts, context_biases):
        x = self.attention(x, bias)
        x = self.crossattention(x, None, contexts, context_biases)
        h = nn.functional.gelu(self.intermediate.dense(x))
        return self.output.LayerNorm(self.output.dense(h) + x)


class Embeddings(nn.Module):
    def __init__(self, vocab, hidden, positions, eps):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab, hidden)
        self.position_embeddings = nn.Embedding(positions, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1])[None]
        return self.LayerNorm(self.word_embeddings(ids) + self.position_embeddings(pos))


class Encoder(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class TextEncoder(nn.Module):
    def __init__(self, *, vocab, hidden, layers, heads, ffn, positions, kv_width, merge_from,
                 eps=1e-12):
        super().__init__()
        self.embeddings = Embeddings(vocab, hidden, positions, eps)
        self.encoder = Encoder([Layer(hidden, kv_width, heads, ffn, eps, merge=i >= merge_from)
                                for i in range(layers)])

    def forward(self, ids, mask, contexts):
        x = self.embeddings(ids)
        bias = ((1.0 - mask[:, None, None, :].float()) * -10000.0)
        # Image tokens are never padded: the original's all-ones image masks add 0.
        context_biases = [torch.zeros(c.shape[0], 1, 1, c.shape[1]) for c in contexts]
        for layer in self.encoder.layer:
            x = layer(x, bias, contexts, context_biases)
        return x


class BlipNlvr(nn.Module):
    def __init__(self, vision_config, *, vocab, hidden, layers, heads, ffn, positions,
                 merge_from):
        super().__init__()
        from transformers import BlipVisionModel
        self.vision_model = BlipVisionModel(vision_config)
        self.text_encoder = TextEncoder(vocab=vocab, hidden=hidden, layers=layers, heads=heads,
                                        ffn=ffn, positions=positions,
                                        kv_width=vision_config.hidden_size, merge_from=merge_from)
        self.cls_head = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, image0, image1, ids, mask, enc_id: int):
        embeds = self.vision_model(pixel_values=torch.cat([image0, image1])).last_hidden_state
        e0, e1 = torch.split(embeds, image0.shape[0])
        ids = ids.clone()
        ids[:, 0] = enc_id
        hidden = self.text_encoder(ids, mask, [e0, e1])
        return self.cls_head(hidden[:, 0])


def original_state_dict(model: BlipNlvr, config) -> dict[str, np.ndarray]:
    """The model's state dict in the original release's layout (numpy): the HF vision keys
    renamed to visual_encoder.* through blip_jax's key table, the rest as they are."""
    from flax import linen as fnn

    from blip_jax.convert import mapping
    from blip_jax.models.blip import abstract_params

    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    for path in mapping.flatten(fnn.meta.unbox(abstract_params(config))):
        if path[0] == "vision":
            sd[mapping.torch_key(path, mapping.ORIGINAL, False)] = sd.pop(
                mapping.torch_key(path, mapping.HF, False))
    return {k: v for k, v in sd.items() if not k.startswith("vision_model.")}
