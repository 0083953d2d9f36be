"""The hand-written MiniLM forward computes what transformers' BertModel computes, from the same weights;
its int8 form stays close to it and gives each sentence the same embedding whatever its batch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from autodidact.inference import encoder as enc_mod
from autodidact.inference.encoder import EncoderUnavailable, SentenceEncoder
from autodidact.inference.minilm import MiniLM


@pytest.fixture(scope="module")
def reference():
    from transformers import AutoModel, AutoTokenizer

    path = str(enc_mod.wheel_model_dir())
    return AutoTokenizer.from_pretrained(path, local_files_only=True), AutoModel.from_pretrained(path, local_files_only=True).eval()


# Questions shaped like the ones routed: people-typed, misspelt, long, a look-alike pair.
QUESTIONS = [
    "Who built the Skellan Tower?", "wen did they build the old market on willow rd", "hi",
    "How tall is Mount Carradel, in metres?", "When was the blue chapel on Willow Road built?",
    "whats the name of the ferrys cook", "Which river runs through the town of Brackenford and how long is it?",
    "capital of australia", "Could you tell me, roughly, how many people live in Oldcastle these days?",
]


def test_int8_embeddings_stay_close_to_fp32(encoder: SentenceEncoder) -> None:
    a, b = encoder.encode(QUESTIONS, int8=True), encoder.encode(QUESTIONS)
    own = (a * b).sum(1)  # each sentence, int8 against fp32
    assert own.min() > 0.97 and own.mean() > 0.99
    # What routing compares: similarities between sentences move by about a hundredth at most.
    assert ((a @ a.T) - (b @ b.T)).abs().max() < 0.05


def test_int8_embedding_does_not_depend_on_the_batch(encoder: SentenceEncoder) -> None:
    # One activation scale per call would let a long batch-mate change a short query's embedding.
    alone = torch.cat([encoder.encode([q], int8=True) for q in QUESTIONS])
    together = encoder.encode(QUESTIONS, int8=True)
    torch.testing.assert_close(together, alone, atol=1e-6, rtol=0)


@pytest.mark.parametrize(
    "texts",
    [
        ["Who built the Skellan Tower?"],  # one unpadded query: the mask-free attention path
        ["hi", "wen did they build the old market on willow rd", "How tall is Mount Carradel, in metres?"],
        ["x " * 300],  # truncated at 256 tokens: every position embedding up to there
    ],
)
def test_hidden_states_match_transformers(encoder: SentenceEncoder, reference, texts: list[str]) -> None:
    tok, bert = reference
    batch = tok(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    with torch.inference_mode():
        want = bert(**batch).last_hidden_state
    got = encoder.model(batch["input_ids"], batch["attention_mask"])
    real = batch["attention_mask"].bool()  # padded positions are never pooled; only real tokens must agree
    torch.testing.assert_close(got[real], want[real], atol=2e-5, rtol=1e-4)


def test_prefixed_checkpoint_loads_and_missing_layer_is_refused() -> None:
    state = load_file(str(enc_mod.wheel_model_dir() / "model.safetensors"))
    nested = MiniLM({f"bert.{k}": v for k, v in state.items()}, 12, 1e-12, "bert.")
    assert len(nested.layers) == 6
    with pytest.raises(KeyError, match="word_embeddings"):
        MiniLM({k: v for k, v in state.items() if "word_embeddings" not in k}, 12, 1e-12)


def test_truncated_checkpoint_says_what_to_do(tmp_path) -> None:
    src = enc_mod.wheel_model_dir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (src / name).exists():
            (tmp_path / name).write_bytes((src / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes()[:4096])
    with pytest.raises(EncoderUnavailable, match="setup.sh"):
        SentenceEncoder(tmp_path)
