"""PEFT interop: a card exported to PEFT gives PEFT the same logits as our own loading, and back.

Measured on the tiny model (fp32 base): the logits are bit-identical (max |diff| = 0.0) for float16,
bfloat16 and float32 cards, because both sides compute ``base(x) + B(A(x)) * alpha / r`` with the
same tensors. The tests allow ``atol=1e-5`` so an op-order change inside PEFT would not be a false alarm;
the adapter itself moves the logits by ~1, so a wrong name, scale or transpose cannot pass.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from autodidact.card import CardError, attach_card, read_card, write_card
from autodidact.inference.lora_layer import inject_lora, lora_state_dict
from autodidact.models import load_tiny
from autodidact.peft_interop import (
    CONFIG_NAME,
    PREFIX,
    WEIGHTS_NAME,
    PeftInteropError,
    export_peft,
    import_peft,
)
from tests.support.lora_cards import make_card

peft = pytest.importorskip("peft")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5  # measured: 0.0
IDS = torch.randint(0, 250, (2, 19), generator=torch.Generator().manual_seed(7))


@torch.no_grad()
def our_logits(card_path):
    b = load_tiny()
    attach_card(read_card(card_path), b.model, b.fingerprint)
    return b.model(IDS).logits


@torch.no_grad()
def peft_logits(folder):
    pm = peft.PeftModel.from_pretrained(load_tiny().model, str(folder))
    pm.eval()
    return pm(IDS).logits


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_peft_loads_export_with_our_logits(tmp_path, dtype):
    card = make_card(tmp_path / "s.lora.arrow", dtype=dtype)
    out = export_peft(card, tmp_path / "peft")
    assert {p.name for p in out.iterdir()} >= {CONFIG_NAME, WEIGHTS_NAME}
    ours, theirs = our_logits(card), peft_logits(out)
    with torch.no_grad():
        bare = load_tiny().model(IDS).logits
    assert (ours - bare).abs().max() > 0.1  # the adapter matters, so equality below means something
    torch.testing.assert_close(theirs, ours, atol=ATOL, rtol=0)


def test_export_names_and_config(tmp_path):
    from safetensors import safe_open

    card = make_card(tmp_path / "s.lora.arrow", r=4, alpha=8)
    out = export_peft(card, tmp_path / "peft")
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["target_modules"]) == ("LORA", 4, 8, ["q_proj", "v_proj"])
    assert cfg["base_model_name_or_path"] == "tiny-llama-s0"
    with safe_open(str(out / WEIGHTS_NAME), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata()["autodidact.fingerprint"] == read_card(card).meta["base_model"]["fingerprint"]
    assert f"{PREFIX}model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    assert len(keys) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_import_round_trip_identical(tmp_path, dtype):
    card = make_card(tmp_path / "s.lora.arrow", dtype=dtype)
    out = export_peft(card, tmp_path / "peft")
    back = import_peft(out, tmp_path / "back.lora.arrow", load_tiny())
    a, b = read_card(card), read_card(tmp_path / "back.lora.arrow")
    assert back.skill == a.skill == b.skill
    assert b.meta["lora"] == a.meta["lora"]
    assert b.meta["base_model"]["fingerprint"] == a.meta["base_model"]["fingerprint"]
    assert b.meta["source"]["format"] == "peft"
    assert set(a.tensors) == set(b.tensors)
    for name, t in a.tensors.items():
        assert b.tensors[name].dtype == t.dtype
        assert torch.equal(b.tensors[name], t), name


def _peft_saved(tmp_path, **lora_kwargs):
    """An adapter made and saved by PEFT itself (no autodidact metadata), with a random lora_B."""
    cfg = peft.LoraConfig(task_type="CAUSAL_LM", **lora_kwargs)
    pm = peft.get_peft_model(load_tiny().model, cfg)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    pm.eval()
    with torch.no_grad():
        logits = pm(IDS).logits
    pm.save_pretrained(str(tmp_path / "peft_native"))
    return tmp_path / "peft_native", logits


@pytest.mark.parametrize("rslora", [False, True])
def test_import_peft_native_adapter_gives_peft_logits(tmp_path, rslora):
    folder, expected = _peft_saved(tmp_path, r=4, lora_alpha=16, target_modules=["q_proj", "o_proj"],
                                   use_rslora=rslora)
    card = import_peft(folder, tmp_path / "imported.lora.arrow", load_tiny(), skill="native")
    assert card.skill == "native"
    want_alpha = 16 * math.sqrt(4) if rslora else 16  # rsLoRA's alpha/sqrt(r) kept as alpha'/r
    assert card.meta["lora"]["alpha"] == pytest.approx(want_alpha)
    torch.testing.assert_close(our_logits(tmp_path / "imported.lora.arrow"), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    ("targets", "with_model", "want_targets", "want_layers"),
    [
        (("q_proj", "v_proj"), True, ["q_proj", "v_proj"], None),
        (("q_proj", "v_proj"), False, ["q_proj", "v_proj"], [0, 1]),  # without the model: say the layers
        (("model.layers.1.self_attn.q_proj",), False, ["q_proj"], [1]),
        (("model.layers.1.self_attn.q_proj",), True, ["q_proj"], [1]),
        (("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"), False, ["q_proj", "v_proj"], [1]),
        (("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"), False,
         ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"], None),
    ],
    ids=["every-layer-model-given", "every-layer", "one-layer", "one-layer-model-given", "one-layer-two-leaves", "irregular"],
)
def test_peft_wraps_exactly_the_cards_layers(tmp_path, targets, with_model, want_targets, want_layers):
    card = make_card(tmp_path / "s.lora.arrow", targets=targets)
    out = export_peft(card, tmp_path / "peft", model=load_tiny().model if with_model else None)
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert (cfg["target_modules"], cfg["layers_to_transform"]) == (want_targets, want_layers)
    pm = peft.PeftModel.from_pretrained(load_tiny().model, str(out)).eval()
    wrapped = {n.removeprefix(PREFIX) for n, m in pm.named_modules() if "default" in getattr(m, "lora_A", {})}
    assert wrapped == set(read_card(card).layers)  # no extra (identity) adapters, none missing
    with torch.no_grad():
        theirs = pm(IDS).logits
    torch.testing.assert_close(theirs, our_logits(card), atol=ATOL, rtol=0)


def test_metadata_saying_every_layer_keeps_the_config_plain(tmp_path):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "layers_to_transform": None}
    out = export_peft(make_card(tmp_path / "s.lora.arrow", extra={"lora": lora}), tmp_path / "peft")
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert (cfg["target_modules"], cfg["layers_to_transform"]) == (["q_proj", "v_proj"], None)


@pytest.mark.parametrize(
    ("targets", "want_lora"),
    [
        (("q_proj", "v_proj"), {"target_modules": ["q_proj", "v_proj"]}),
        (("model.layers.1.self_attn.q_proj",), {"target_modules": ["q_proj"], "layers_to_transform": [1]}),
    ],
    ids=["every-layer", "one-layer"],
)
def test_import_records_the_layers_like_the_trainer(tmp_path, targets, want_lora):
    out = export_peft(make_card(tmp_path / "s.lora.arrow", targets=targets), tmp_path / "peft")
    card = import_peft(out, tmp_path / "back.lora.arrow", load_tiny())
    assert card.meta["lora"] == {"r": 4, "alpha": 8, **want_lora}
    again = export_peft(tmp_path / "back.lora.arrow", tmp_path / "peft2")
    assert json.loads((again / CONFIG_NAME).read_text())["target_modules"] == want_lora["target_modules"]


def test_import_refuses_other_base_weights(tmp_path):
    out = export_peft(make_card(tmp_path / "s.lora.arrow"), tmp_path / "peft")
    with pytest.raises(PeftInteropError, match="base weights"):
        import_peft(out, tmp_path / "x.lora.arrow", load_tiny(seed=1))
    assert not (tmp_path / "x.lora.arrow").exists()


def test_import_refuses_shapes_that_do_not_fit(tmp_path):
    folder, _ = _peft_saved(tmp_path, r=4, lora_alpha=8, target_modules=["q_proj"])
    with pytest.raises(CardError, match="shape"):
        import_peft(folder, tmp_path / "x.lora.arrow", load_tiny(hidden=32))
    assert not (tmp_path / "x.lora.arrow").exists()


def _edit_config(folder, **changes):
    cfg = json.loads((folder / CONFIG_NAME).read_text())
    cfg.update(changes)
    (folder / CONFIG_NAME).write_text(json.dumps(cfg))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"use_dora": True}, "use_dora"),
        ({"peft_type": "IA3"}, "only LORA"),
        ({"bias": "all"}, "bias"),
        ({"r": 0}, "r=0"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ],
)
def test_import_refuses_unsupported_configs(tmp_path, change, match):
    out = export_peft(make_card(tmp_path / "s.lora.arrow"), tmp_path / "peft")
    _edit_config(out, **change)
    with pytest.raises(PeftInteropError, match=match):
        import_peft(out, tmp_path / "x.lora.arrow", load_tiny())


def test_import_refuses_missing_or_pickled_or_truncated_weights(tmp_path):
    out = export_peft(make_card(tmp_path / "s.lora.arrow"), tmp_path / "peft")
    data = (out / WEIGHTS_NAME).read_bytes()
    (out / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    with pytest.raises(PeftInteropError, match="corrupt or truncated"):
        import_peft(out, tmp_path / "x.lora.arrow", load_tiny())
    (out / WEIGHTS_NAME).rename(out / "adapter_model.bin")
    with pytest.raises(PeftInteropError, match="pickle"):
        import_peft(out, tmp_path / "x.lora.arrow", load_tiny())
    with pytest.raises(PeftInteropError, match="no adapter_config.json"):
        import_peft(tmp_path, tmp_path / "x.lora.arrow", load_tiny())


def test_import_refuses_non_linear_lora_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    out = export_peft(make_card(tmp_path / "s.lora.arrow"), tmp_path / "peft")
    tensors = load_file(str(out / WEIGHTS_NAME))
    tensors[f"{PREFIX}model.embed_tokens.lora_embedding_A"] = torch.zeros(4, 10)
    save_file(tensors, str(out / WEIGHTS_NAME))
    with pytest.raises(PeftInteropError, match="lora_embedding_A"):
        import_peft(out, tmp_path / "x.lora.arrow", load_tiny())


def test_export_refuses_to_overwrite_and_bad_cards(tmp_path):
    card = make_card(tmp_path / "s.lora.arrow")
    export_peft(card, tmp_path / "peft")
    with pytest.raises(PeftInteropError, match="already holds"):
        export_peft(card, tmp_path / "peft")
    export_peft(card, tmp_path / "peft", overwrite=True)
    junk = tmp_path / "junk.lora.arrow"
    junk.write_bytes(b"not arrow")
    with pytest.raises(CardError, match="corrupt or truncated"):
        export_peft(junk, tmp_path / "peft2")
    assert not (tmp_path / "peft2").exists()


@pytest.mark.slow
def test_smollm2_export_gives_peft_the_same_logits(tmp_path):
    """SmolLM2 (fp32 folder converted from the shipped GGUF), rank-8 q/v card with random B (~5 s)."""
    from autodidact.models import load_smollm2

    ours = load_smollm2()
    inject_lora(ours.model, ["q_proj", "v_proj"], r=8, alpha=16, adapter_name="s")
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in ours.model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    meta = {"skill": "s", "base_model": {"name": ours.name, "fingerprint": ours.fingerprint},
            "lora": {"r": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}, "train": {}}
    card = write_card(tmp_path / "s.lora.arrow", lora_state_dict(ours.model, "s"), meta, dtype="float16")
    ours = load_smollm2()
    attach_card(read_card(card), ours.model, ours.fingerprint)
    out = export_peft(card, tmp_path / "peft")
    cfg = json.loads((out / CONFIG_NAME).read_text())
    assert cfg["base_model_name_or_path"].endswith("SmolLM2-135M-Instruct-fp32")
    pm = peft.PeftModel.from_pretrained(load_smollm2().model, str(out))
    ids = ours.tokenizer("Who kept the Velmora lighthouse?", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = ours.model(ids).logits, pm.eval()(ids).logits
        bare = load_smollm2().model(ids).logits
    assert (a - bare).abs().max() > 0.5  # measured ~5: the adapter matters
    torch.testing.assert_close(b, a, atol=1e-4, rtol=0)  # measured: 0.0 (bit-identical)
