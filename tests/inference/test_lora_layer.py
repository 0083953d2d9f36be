"""LoRALinear and the model-level helpers, table-driven over a toy MLP and the seeded tiny Llama."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn

from autodidact.inference.lora_layer import (
    LoRAError,
    LoRALinear,
    delete_adapter,
    inject_lora,
    lora_layers,
    lora_state_dict,
    mark_only_lora_as_trainable,
    set_adapter,
)
from autodidact.models import load_model, load_tiny


@dataclass
class Case:
    """A model, the layers to wrap, and a way to run it to a tensor."""

    id: str
    build: Callable[[], nn.Module]
    targets: list[str]
    expected: list[str]  # qualified names inject_lora must return, in module order
    inputs: Callable[[], torch.Tensor]
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def _tiny() -> nn.Module:
    return load_model("tiny").model


def _tiny_ids() -> torch.Tensor:
    return torch.randint(0, 250, (2, 12), generator=torch.Generator().manual_seed(0))


CASES = [
    Case(
        "mlp",
        _mlp,
        targets=["0", "2"],
        expected=["0", "2"],
        inputs=lambda: torch.randn(3, 8, generator=torch.Generator().manual_seed(1)),
        run=lambda m, x: m(x),
    ),
    Case(
        "tiny-llama",
        _tiny,
        targets=["q_proj", "v_proj"],
        expected=[f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")],
        inputs=_tiny_ids,
        run=lambda m, x: m(input_ids=x).logits,
    ),
]
IDS = [c.id for c in CASES]


def _randomise(model: nn.Module, adapter: str, seed: int = 0) -> None:
    """Give an adapter a non-zero update (B starts at zero, so a fresh adapter is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            if adapter in layer.lora_B:
                b = layer.lora_B[adapter]
                b.copy_(torch.randn(b.shape, generator=g) * 0.5)


def _base_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" not in k}


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_fresh_adapter_is_identity_and_inject_returns_names(case: Case) -> None:
    model = case.build().eval()
    x = case.inputs()
    with torch.no_grad():
        before = case.run(model, x)
    names = inject_lora(model, case.targets, r=4, alpha=8)
    assert names == case.expected
    assert sorted(lora_layers(model)) == sorted(case.expected)
    with torch.no_grad():
        after = case.run(model, x)
    assert torch.equal(before, after)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_base_layer_is_the_original_object(case: Case) -> None:
    model = case.build()
    originals = {n: model.get_submodule(n) for n in case.expected}
    inject_lora(model, case.targets, r=4, alpha=8)
    for n, orig in originals.items():
        wrapped = model.get_submodule(n)
        assert isinstance(wrapped, LoRALinear)
        assert wrapped.base_layer is orig
        assert wrapped.base_layer.weight is orig.weight


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_matches_forward_unmerge_restores_and_merge_is_idempotent(case: Case) -> None:
    model = case.build().eval()
    x = case.inputs()
    inject_lora(model, case.targets, r=4, alpha=8)
    _randomise(model, "default")
    w0 = _base_weights(model)
    with torch.no_grad():
        unmerged = case.run(model, x)
        for layer in lora_layers(model).values():
            layer.merge()
        merged_w = _base_weights(model)
        merged = case.run(model, x)
        for layer in lora_layers(model).values():
            layer.merge()  # a second merge must not add the update twice
    assert any(not torch.equal(w0[k], merged_w[k]) for k in w0), "merge changed no weight"
    assert torch.allclose(merged, unmerged, atol=1e-4)
    for k, v in _base_weights(model).items():
        assert torch.equal(v, merged_w[k]), f"second merge changed {k}"
    for layer in lora_layers(model).values():
        assert layer.merged_adapters == ["default"]
        layer.unmerge()
        layer.unmerge()  # idempotent too
        assert layer.merged_adapters == []
    for k, v in _base_weights(model).items():
        assert torch.allclose(v, w0[k], atol=1e-6), f"unmerge did not restore {k}"
    with torch.no_grad():
        assert torch.allclose(case.run(model, x), unmerged, atol=1e-5)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_merge_refuses_non_finite_and_leaves_weights(case: Case, bad: float) -> None:
    model = case.build()
    inject_lora(model, case.targets, r=4, alpha=8)
    layer = next(iter(lora_layers(model).values()))
    w0 = layer.base_layer.weight.detach().clone()
    with torch.no_grad():
        layer.lora_B["default"][0, 0] = bad
    with pytest.raises(LoRAError, match="NaN or Inf"):
        layer.merge()
    assert torch.equal(layer.base_layer.weight, w0)
    assert layer.merged_adapters == []


def test_merge_refuses_overflow_of_the_base_dtype() -> None:
    layer = LoRALinear(nn.Linear(4, 4).half())
    w0 = layer.base_layer.weight.detach().clone()
    layer.add_adapter("big", r=1, alpha=1)
    with torch.no_grad():
        layer.lora_A["big"].fill_(300.0)
        layer.lora_B["big"].fill_(300.0)  # 9e4: finite in float32, Inf once cast to float16 (max 65504)
    with pytest.raises(LoRAError, match="overflows"):
        layer.merge("big")
    assert torch.equal(layer.base_layer.weight, w0)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_set_adapter_disable_and_none(case: Case) -> None:
    model = case.build().eval()
    x = case.inputs()
    with torch.no_grad():
        base = case.run(model, x)
    inject_lora(model, case.targets, r=4, alpha=8)
    _randomise(model, "default")
    with torch.no_grad():
        adapted = case.run(model, x)
        assert not torch.allclose(adapted, base)
        set_adapter(model, None)
        assert all(layer.active_adapter is None for layer in lora_layers(model).values())
        assert torch.equal(case.run(model, x), base)
        set_adapter(model, "default")
        assert torch.equal(case.run(model, x), adapted)
        for layer in lora_layers(model).values():
            layer.disabled = True
        assert torch.equal(case.run(model, x), base)
        for layer in lora_layers(model).values():
            layer.disabled = False
        assert torch.equal(case.run(model, x), adapted)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_two_adapters_switch_outputs(case: Case) -> None:
    model = case.build().eval()
    x = case.inputs()
    inject_lora(model, case.targets, r=4, alpha=8, adapter_name="a")
    _randomise(model, "a", seed=1)
    inject_lora(model, case.targets, r=2, alpha=4, adapter_name="b")
    _randomise(model, "b", seed=2)
    for layer in lora_layers(model).values():
        assert layer.adapters == ["a", "b"]
        assert layer.active_adapter == "b"  # the newest adapter is active
    with torch.no_grad():
        set_adapter(model, "a")
        out_a = case.run(model, x)
        set_adapter(model, "b")
        out_b = case.run(model, x)
        set_adapter(model, "a")
        again_a = case.run(model, x)
    assert not torch.allclose(out_a, out_b)
    assert torch.equal(out_a, again_a)
    # state dicts are per adapter, with the adapter's own rank
    sa, sb = lora_state_dict(model, "a"), lora_state_dict(model, "b")
    assert set(sa) == set(sb) == {f"{n}.{k}" for n in case.expected for k in ("lora_A", "lora_B")}
    assert all(sa[k].shape[0] == 4 for k in sa if k.endswith("lora_A"))
    assert all(sb[k].shape[1] == 2 for k in sb if k.endswith("lora_B"))
    delete_adapter(model, "a")  # "a" was active: the layers fall back to the bare base
    assert all(layer.adapters == ["b"] for layer in lora_layers(model).values())
    assert all(layer.active_adapter is None for layer in lora_layers(model).values())
    set_adapter(model, "b")
    with torch.no_grad():
        assert torch.equal(case.run(model, x), out_b)
    with pytest.raises(LoRAError, match="no adapter 'a'"):
        next(iter(lora_layers(model).values())).set_adapter("a")


def test_set_adapter_on_a_model_falls_back_to_none_where_a_layer_lacks_it() -> None:
    model = _mlp()
    inject_lora(model, ["0", "2"], r=2, alpha=2, adapter_name="both")
    inject_lora(model, ["2"], r=2, alpha=2, adapter_name="only_last")
    set_adapter(model, "only_last")
    assert model[0].active_adapter is None
    assert model[2].active_adapter == "only_last"


@pytest.mark.parametrize(
    ("targets", "needle"),
    [
        (["nope"], "nope"),
        (["q_prj", "v_prj"], "q_prj"),
        (["embed_tokens"], "embed_tokens"),  # exists, but is not an nn.Linear
    ],
)
def test_unknown_targets_raise_a_clear_error(targets: list[str], needle: str) -> None:
    model = _tiny()
    before = _base_weights(model)
    with pytest.raises(LoRAError, match="target_modules") as e:
        inject_lora(model, targets, r=4, alpha=8)
    assert needle in str(e.value)
    assert not lora_layers(model)
    assert _base_weights(model).keys() == before.keys()


@pytest.mark.parametrize(
    ("call", "needle"),
    [
        (lambda layer: layer.add_adapter("x", r=0, alpha=1), "rank must be positive"),
        (lambda layer: layer.add_adapter("default", r=2, alpha=1), "already exists"),
        (lambda layer: layer.set_adapter("ghost"), "no adapter 'ghost'"),
        (lambda layer: layer.delete_adapter("ghost"), "no adapter 'ghost'"),
        (lambda layer: layer.delta_weight("ghost"), "no adapter 'ghost'"),
        (lambda layer: layer.add_adapter("a.b", r=2, alpha=1), "not usable"),
        (lambda layer: layer.add_adapter("", r=2, alpha=1), "not usable"),
        (lambda layer: layer.add_adapter("copy", r=2, alpha=1), "not usable"),  # a ParameterDict method
        (lambda layer: layer.add_adapter("training", r=2, alpha=1), "not usable"),  # a Module attribute
    ],
    ids=["zero-rank", "duplicate", "set-unknown", "delete-unknown", "delta-unknown", "dotted-name",
         "empty-name", "dict-method-name", "module-attribute-name"],
)
def test_layer_refusals(call, needle: str) -> None:
    layer = LoRALinear(nn.Linear(4, 4))
    layer.add_adapter("default", r=2, alpha=2)
    with pytest.raises(LoRAError, match=needle):
        call(layer)


def test_wrapping_a_non_linear_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(2, 2, 1))  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("only", [None, "b"], ids=["all-adapters", "one-adapter"])
def test_mark_only_lora_as_trainable(case: Case, only: str | None) -> None:
    model = case.build()
    for p in model.parameters():
        p.requires_grad = True  # start from "everything trainable" so freezing is observable
    inject_lora(model, case.targets, r=4, alpha=8, adapter_name="a")
    inject_lora(model, case.targets, r=2, alpha=4, adapter_name="b")
    n = mark_only_lora_as_trainable(model, only)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    want = {
        name
        for name, _ in model.named_parameters()
        if "lora_" in name and (only is None or name.endswith(f".{only}"))
    }
    assert trainable == want
    assert want, "no LoRA parameters found"
    assert n == sum(p.numel() for name, p in model.named_parameters() if name in want)
    assert all(not p.requires_grad for name, p in model.named_parameters() if "lora_" not in name)


def test_delete_a_merged_adapter_unmerges_first() -> None:
    layer = LoRALinear(nn.Linear(4, 3))
    w0 = layer.base_layer.weight.detach().clone()
    layer.add_adapter("x", r=2, alpha=2)
    with torch.no_grad():
        layer.lora_B["x"].fill_(0.3)
    layer.merge("x")
    assert not torch.allclose(layer.base_layer.weight, w0)
    layer.delete_adapter("x")
    assert torch.allclose(layer.base_layer.weight, w0, atol=1e-6)
    assert layer.adapters == [] and layer.active_adapter is None


def test_forward_skips_the_update_for_a_merged_adapter() -> None:
    layer = LoRALinear(nn.Linear(4, 3))
    layer.add_adapter("x", r=2, alpha=2)
    with torch.no_grad():
        layer.lora_B["x"].fill_(0.3)
    x = torch.randn(5, 4)
    with torch.no_grad():
        y = layer(x)
        layer.merge()
        assert torch.allclose(layer(x), y, atol=1e-6)  # not applied twice


def test_unknown_targets_name_the_layers_that_exist_and_touch_nothing():
    model = load_tiny().model
    before = {n for n, _ in model.named_modules()}
    with pytest.raises(LoRAError, match=r"this model has: .*q_proj"):
        inject_lora(model, ["foo"], r=4, alpha=8)
    assert {n for n, _ in model.named_modules()} == before


def test_an_adapter_about_to_be_overwritten_skips_the_random_init() -> None:
    """``init=False`` (used when a card is attached) starts A at zero instead of drawing it: the
    update B·A is the identity either way, and the card's weights replace both right after."""
    layer = LoRALinear(torch.nn.Linear(8, 6))
    layer.add_adapter("drawn", r=2, alpha=4.0)
    layer.add_adapter("blank", r=2, alpha=4.0, init=False)
    assert layer.lora_A["drawn"].abs().sum() > 0 and not layer.lora_A["blank"].any()
    assert not layer.lora_B["drawn"].any() and not layer.lora_B["blank"].any()
    x = torch.randn(3, 8)
    layer.set_adapter("blank")
    assert torch.equal(layer(x), layer.base_layer(x))


def _walked(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def test_lora_layers_cache_follows_injection_and_replaced_parents() -> None:
    """``lora_layers`` is cached per model; what it returns must always equal a fresh walk."""
    model = load_tiny(seed=0).model
    inject_lora(model, ["q_proj"], r=2, alpha=4, adapter_name="a")
    assert lora_layers(model) == _walked(model) and len(_walked(model)) == 2
    inject_lora(model, ["v_proj"], r=2, alpha=4, adapter_name="b")  # new wrappers: the cache must see them
    assert lora_layers(model) == _walked(model) and len(_walked(model)) == 4
    first = model.model.layers[0]
    model.model.layers[0] = nn.Identity()  # a parent swapped out, as train.py's release of frozen layers does
    assert lora_layers(model) == _walked(model) and len(_walked(model)) == 2
    model.model.layers[0] = first
    assert lora_layers(model) == _walked(model) and len(_walked(model)) == 4
    got = lora_layers(model)
    got.clear()  # callers get a copy: mutating it leaves the cache alone
    assert lora_layers(model) == _walked(model)


def test_injecting_by_full_path_on_wrapped_layers_matches_the_walk() -> None:
    """The no-walk path (every target a full path that already carries adapters) touches exactly the
    layers, in the order, that the walk would, and still refuses a name clash."""
    model = load_tiny(seed=0).model
    names = inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, adapter_name="a")
    again = inject_lora(model, list(reversed(names)), r=2, alpha=4, adapter_name="b")
    assert again == names
    assert all("b" in m.lora_A for m in lora_layers(model).values())
    with pytest.raises(LoRAError, match="already exists"):
        inject_lora(model, names, r=2, alpha=4, adapter_name="b")


def test_a_walk_overtaken_by_an_injection_is_not_cached() -> None:
    """A walk that a concurrent injection overtakes must not store its (now incomplete) result."""
    import autodidact.inference.lora_layer as ll

    model = load_tiny(seed=0).model
    inject_lora(model, ["q_proj"], r=2, alpha=4, adapter_name="a")
    ll._LORA_LAYERS.clear()
    walk = model.named_modules

    def overtaken(*args, **kwargs):  # another thread wraps v_proj while this walk is under way
        out = list(walk(*args, **kwargs))
        del model.named_modules  # the real walk again, for the injection's own lookups
        inject_lora(model, ["v_proj"], r=2, alpha=4, adapter_name="b")
        return iter(out)

    model.named_modules = overtaken
    stale = lora_layers(model)
    assert len(stale) == 2 and model not in ll._LORA_LAYERS  # the stale walk was returned, not kept
    assert lora_layers(model) == _walked(model) and len(_walked(model)) == 4
