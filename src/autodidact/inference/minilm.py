"""The forward pass of all-MiniLM-L6-v2 (a 6-layer BERT) written out in a few tensor ops.

Routing embeds one short query per call (about a dozen tokens), where the work is tiny and the
overhead around it is not: ``transformers``' BertModel spends roughly as long in Python (module hooks,
output capturing, signature inspection, the unused pooler) as in its 37 matrix products. This module
runs the same arithmetic with fused Q/K/V projections and PyTorch's fused attention, from the very
same weights; ``tests/inference/test_minilm.py`` checks it against ``transformers`` to float32
rounding.

    h = LN(E_word[ids] + E_pos[0:L] + E_type[0])                        # (B, L, 384)
    per layer:  q, k, v = split(h W_qkv + b_qkv)                        # 12 heads of 32
                h = LN(h + softmax(q kᵀ/√32 + mask) v · W_o + b_o)
                h = LN(h + GELU(h W_i + b_i) W_o2 + b_o2)               # 384 -> 1536 -> 384

``forward(..., int8=True)`` runs the four products of each layer as dynamically quantised int8 GEMMs
(fbgemm: weights int8 per output row, activations uint8 per call). For a dozen-token query the fp32
products are bound by reading 42 MB of weights, more than this machine's L3 cache; int8 reads a
quarter of that and embeds a query in ~4-6 ms instead of ~12 ms here. The router embeds each routed
*query* this way (``router.encoder_int8``); routing keys and the distiller's judgements of meaning, made
once per skill, stay fp32. The embeddings move by a cosine of ~0.006 on average
(``tests/inference/test_minilm.py`` bounds it), and the router was refitted and re-measured with
int8 queries against fp32 keys (README "Router").
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import torch
import torch.nn.functional as F


class MiniLM(torch.nn.Module):
    """BERT encoder without pooler, dropout or caches: ``forward(ids, mask) -> (B, L, hidden)``."""

    def __init__(self, state: Mapping[str, torch.Tensor], heads: int, eps: float, prefix: str = "") -> None:
        """``state``: a BertModel state dict (keys as in the checkpoint, optionally under ``prefix``)."""
        super().__init__()

        def get(name: str) -> torch.Tensor:
            return state[prefix + name].detach().to(torch.float32).contiguous()

        self.heads = heads
        self.eps = eps
        self.word = get("embeddings.word_embeddings.weight")
        self.pos = get("embeddings.position_embeddings.weight")
        self.type0 = get("embeddings.token_type_embeddings.weight")[0].clone()
        self.ln = (get("embeddings.LayerNorm.weight"), get("embeddings.LayerNorm.bias"))
        self.hidden = self.word.shape[1]
        self.layers = []
        n = 0
        while f"{prefix}encoder.layer.{n}.attention.self.query.weight" in state:
            p = f"encoder.layer.{n}."
            a = p + "attention."
            # One (3·384, 384) product instead of three: fewer, larger GEMMs for a short query.
            qkv_w = torch.cat([get(a + f"self.{x}.weight") for x in ("query", "key", "value")])
            qkv_b = torch.cat([get(a + f"self.{x}.bias") for x in ("query", "key", "value")])
            self.layers.append((
                qkv_w, qkv_b,
                get(a + "output.dense.weight"), get(a + "output.dense.bias"),
                get(a + "output.LayerNorm.weight"), get(a + "output.LayerNorm.bias"),
                get(p + "intermediate.dense.weight"), get(p + "intermediate.dense.bias"),
                get(p + "output.dense.weight"), get(p + "output.dense.bias"),
                get(p + "output.LayerNorm.weight"), get(p + "output.LayerNorm.bias"),
            ))
            n += 1
        if not self.layers:
            raise KeyError(f"no encoder layers under {prefix!r}encoder.layer.0 in the state dict")

    @cached_property
    def packed(self) -> list[tuple]:
        """The int8 path's weights: each layer's four products packed for fbgemm (see ``_int8``).

        Packed on first int8 use (~0.16 s here), not at load: processes that only embed in fp32 (training,
        the distiller, calibration) never pay for it. Packing is pure, so two threads racing here at
        worst pack twice."""
        return [
            tuple(_pack_int8(w, b) for w, b in ((layer[0], layer[1]), (layer[2], layer[3]),
                                                 (layer[6], layer[7]), (layer[8], layer[9])))
            for layer in self.layers
        ]

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, mask: torch.Tensor, int8: bool = False) -> torch.Tensor:
        """Last hidden states for token ids (B, L) with attention mask (B, L) of 0/1; ``int8``: the fast path."""
        if not int8 or ids.shape[0] == 1:
            return self._forward(ids, mask, int8)
        # Dynamic int8 picks one activation scale per call: each sentence runs alone (without its
        # padding), so its embedding never depends on the batch it came in.
        B, L = ids.shape
        out = torch.zeros(B, L, self.hidden)
        for b in range(B):
            n = int(mask[b].sum())
            out[b, :n] = self._forward(ids[b : b + 1, :n], mask[b : b + 1, :n], True)[0]
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, int8: bool) -> torch.Tensor:
        B, L = ids.shape
        d, H = self.hidden, self.heads
        h = F.layer_norm(self.word[ids] + self.pos[:L] + self.type0, (d,), *self.ln, self.eps)
        # Padding keys get -inf-like scores; a single unpadded query takes the mask-free kernel.
        bias = None if bool(mask.all()) else (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
        packed = self.packed if int8 else None
        for n, (qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, i_w, i_b, o2_w, o2_b, ln2_w, ln2_b) in enumerate(self.layers):
            fp32 = ((qkv_w, qkv_b), (o_w, o_b), (i_w, i_b), (o2_w, o2_b))

            def lin(x: torch.Tensor, j: int, n: int = n, fp32: tuple = fp32) -> torch.Tensor:  # product j of 4
                return _int8(x, packed[n][j]) if packed is not None else F.linear(x, *fp32[j])

            q, k, v = lin(h, 0).view(B, L, 3, H, d // H).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(B, L, d)
            h = F.layer_norm(lin(a, 1) + h, (d,), ln1_w, ln1_b, self.eps)
            h = F.layer_norm(lin(F.gelu(lin(h, 2)), 3) + h, (d,), ln2_w, ln2_b, self.eps)
        return h


def _int8(x: torch.Tensor, packed) -> torch.Tensor:
    """x W^T + b with W int8 per output channel and x quantised to uint8 on the fly (full 8-bit range)."""
    return torch.ops.quantized.linear_dynamic(x, packed, False)


def _pack_int8(w: torch.Tensor, b: torch.Tensor):
    """fbgemm's packed form of an fp32 linear: symmetric int8 weights, one scale per output row."""
    import warnings

    scale = (w.abs().amax(1).clamp(min=1e-8) / 127).double()
    with warnings.catch_warnings():
        # torch marks quantised-tensor constructors deprecated (to move to torchao); torch is pinned
        # in requirements.lock, and tests/inference/test_minilm.py fails loudly if the ops go away.
        warnings.simplefilter("ignore", UserWarning)
        qw = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(qw, b)
