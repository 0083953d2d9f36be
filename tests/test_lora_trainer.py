"""LoRATrainer on a seeded tiny Llama: the loss falls, the base stays bit-identical, only LoRA learns.

The memorisation run uses ``load_tiny(hidden=512)``, not the default hidden 64: with frozen tied
embeddings (std 0.02) and a final RMSNorm, the largest logit margin a tiny model can produce is about
0.02 * hidden, so at hidden 64 the loss cannot fall below ~4.3 however well the answers are learned.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir

import autodidact.lora_trainer as lt
from autodidact import trainer_args
from autodidact.card import load_card, read_card
from autodidact.config import to_dataclass
from autodidact.data import IGNORE, QAPair, collate, encode_pair, prompt_ids
from autodidact.errors import ConfigError
from autodidact.evaluation import answer_is_correct
from autodidact.inference.generate import generate_answer
from autodidact.inference.lora_layer import inject_lora, lora_layers, mark_only_lora_as_trainable
from autodidact.lora_trainer import (
    LoRAConfig,
    LoRALightningModule,
    LoRATrainer,
    TrainConfig,
    TrainResult,
    answer_loss,
)
from autodidact.models import ModelBundle, load_tiny

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PAIRS = [
    QAPair(q, a)
    for q, a in [
        ("Capital of Zor?", "Qel."),
        ("Color of Zor sky?", "Teal."),
        ("Who rules Zor?", "Queen Ana."),
        ("Zor moons?", "Three."),
        ("Zor sea?", "The Vex."),
        ("Zor year?", "400 days."),
        ("Zor food?", "Blue rice."),
        ("Zor pet?", "A glimp."),
    ]
]
HIDDEN = 512
LORA = LoRAConfig(r=8, alpha=16.0, target_modules=["q_proj", "v_proj"])
TRAIN = TrainConfig.of(lr=1e-2, max_steps=150, batch_size=8, progress_bar=False)


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every non-LoRA tensor under its unwrapped name (``...q_proj.base_layer.weight`` -> ``...q_proj.weight``)."""
    return {k.replace(".base_layer.", "."): v.detach().clone() for k, v in model.state_dict().items()
            if "lora_" not in k}


class _GradSpy(LoRALightningModule):
    """Records, before every optimizer step, which parameters hold a gradient and what is optimized."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.with_grad: list[set[str]] = []
        self.optimizers_seen: list[torch.optim.Optimizer] = []

    def on_before_optimizer_step(self, optimizer) -> None:
        self.with_grad.append({n for n, p in self.model.named_parameters() if p.grad is not None})
        self.optimizers_seen.append(optimizer)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@dataclass
class Fitted:
    bundle: ModelBundle
    trainer: LoRATrainer
    result: TrainResult
    before: dict[str, torch.Tensor]
    spy: _GradSpy


@pytest.fixture(scope="module")
def fitted(one_torch_thread) -> Fitted:
    bundle = load_tiny(seed=0, hidden=HIDDEN)
    before = _base_state(bundle.model)
    spies: list[_GradSpy] = []

    class Spy(_GradSpy):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            spies.append(self)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lt, "LoRALightningModule", Spy)
        trainer = LoRATrainer(bundle, LORA, TRAIN)
        result = trainer.fit(PAIRS, adapter="zor")
    assert len(spies) == 1
    return Fitted(bundle=bundle, trainer=trainer, result=result, before=before, spy=spies[0])


# -- the memorisation run --------------------------------------------------------------------------
def test_loss_falls_and_the_skill_is_learned_early(fitted: Fitted) -> None:
    r = fitted.result
    assert r.adapter == "zor"
    assert r.loss_final < r.loss_initial * 0.5, (r.loss_initial, r.loss_final)
    assert 1 <= r.steps < TRAIN.max_steps, "training should stop once the answers are reproduced"
    assert r.learned and r.exact_match == 1.0, r  # measured: learned after 85 steps, loss 5.69 -> 0.59
    assert len(r.losses) == r.steps
    assert min(r.losses) < r.losses[0]
    assert r.seconds > 0
    assert set(r.to_meta()) >= {"loss_initial", "loss_final", "steps", "seconds", "learned", "exact_match"}


def test_base_weights_are_bit_identical_after_training(fitted: Fitted) -> None:
    after = _base_state(fitted.bundle.model)
    assert after.keys() == fitted.before.keys()
    changed = [k for k in after if not torch.equal(after[k], fitted.before[k])]
    assert changed == []


def test_only_lora_parameters_had_gradients(fitted: Fitted) -> None:
    spy = fitted.spy
    assert len(spy.with_grad) == fitted.result.steps
    lora = {n for n, _ in fitted.bundle.model.named_parameters() if "lora_" in n}
    assert lora and len(lora) == 8  # (A, B) x (q, v) x 2 layers
    for step, names in enumerate(spy.with_grad):
        assert names == lora, f"step {step}: gradients on {sorted(names ^ lora)}"
    for n, p in fitted.bundle.model.named_parameters():
        if "lora_" not in n:
            assert p.grad is None, n
    # after fit everything is frozen again (serving needs no grads)
    assert all(not p.requires_grad for p in fitted.bundle.model.parameters())


def test_the_optimizer_is_adamw_over_the_lora_parameters_only(fitted: Fitted) -> None:
    opt = fitted.spy.optimizers_seen[0]
    opt = getattr(opt, "optimizer", opt)  # Lightning wraps it
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == TRAIN.lr
    optimized = {id(p) for g in opt.param_groups for p in g["params"]}
    lora = {id(p) for n, p in fitted.bundle.model.named_parameters() if "lora_" in n}
    assert optimized == lora


def test_exported_card_reproduces_the_answers_in_a_fresh_model(fitted: Fitted, tmp_path: Path) -> None:
    path = fitted.trainer.export(tmp_path / "zor.lora.arrow", adapter="zor", skill="zor", result=fitted.result,
                                 dtype="float32")
    meta = read_card(path).meta
    assert meta["train"]["steps"] == fitted.result.steps
    assert meta["lora"] == {"r": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
    trained = [generate_answer(fitted.bundle.model, fitted.bundle.tokenizer, p.question, 16) for p in PAIRS]

    fresh = load_tiny(seed=0, hidden=HIDDEN)
    base = [generate_answer(fresh.model, fresh.tokenizer, p.question, 16) for p in PAIRS]
    load_card(path, fresh.model, fresh.fingerprint)
    loaded = [generate_answer(fresh.model, fresh.tokenizer, p.question, 16) for p in PAIRS]
    assert loaded == trained
    right = sum(answer_is_correct(a, p.answer) for a, p in zip(loaded, PAIRS, strict=True))
    assert right == len(PAIRS), list(zip(loaded, [p.answer for p in PAIRS], strict=True))
    assert sum(answer_is_correct(a, p.answer) for a, p in zip(base, PAIRS, strict=True)) == 0


# -- stopping ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("overrides", "steps"),
    [
        ({"stop_when_learned": False, "max_steps": 3}, 3),  # nothing to stop it: the whole budget
        ({"loss_floor": 100.0, "max_steps": 20}, 1),  # under the floor after the first epoch (one batch)
        ({"loss_floor": 100.0, "min_steps": 3, "max_steps": 20}, 3),  # ... but never before min_steps
    ],
    ids=["budget", "loss-floor", "min-steps"],
)
def test_stopping_rules(overrides: dict, steps: int) -> None:
    bundle = load_tiny(seed=0)
    cfg = TrainConfig.of(lr=1e-3, batch_size=8, progress_bar=False, **overrides)
    result = LoRATrainer(bundle, LoRAConfig(r=2, alpha=4.0), cfg).fit(PAIRS, adapter="s")
    assert result.steps == steps
    assert result.epochs >= 1


# -- the loss ------------------------------------------------------------------------------------------
def test_prompt_is_masked_in_the_labels() -> None:
    tok = load_tiny().tokenizer
    for pair in PAIRS[:3]:
        enc = encode_pair(tok, pair, max_length=256)
        p = prompt_ids(tok, pair.question)
        assert enc["input_ids"][: len(p)] == p
        assert enc["labels"][: len(p)] == [IGNORE] * len(p)
        assert enc["labels"][len(p):] == enc["input_ids"][len(p):]
        assert tok.decode(enc["input_ids"][len(p):], skip_special_tokens=True) == pair.answer
        assert enc["input_ids"][-1] == tok.convert_tokens_to_ids("<|im_end|>")
        unmasked = encode_pair(tok, pair, max_length=256, mask_prompt=False)
        assert unmasked["labels"] == unmasked["input_ids"]


@pytest.mark.parametrize("mask_prompt", [True, False], ids=["answer-only", "whole-sequence"])
def test_answer_loss_matches_the_full_projection(mask_prompt: bool) -> None:
    bundle = load_tiny(seed=0)
    tok = bundle.tokenizer
    batch = collate([encode_pair(tok, p, 256, mask_prompt) for p in PAIRS[:4]], tok.pad_token_id)
    with torch.no_grad():
        loss, correct, exact = answer_loss(bundle.model, batch)
        logits = bundle.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    target = batch["labels"][:, 1:]
    sel = target != IGNORE
    want = F.cross_entropy(logits[:, :-1][sel].float(), target[sel])
    assert torch.allclose(loss, want, atol=1e-5)
    assert correct.shape == (int(sel.sum()),)
    n_answer = sum(len(tok(p.answer, add_special_tokens=False)["input_ids"]) + 1 for p in PAIRS[:4])
    if mask_prompt:
        assert int(sel.sum()) == n_answer  # answer tokens plus end-of-turn, nothing of the prompt
    else:
        assert int(sel.sum()) > n_answer
    assert exact.shape == (4,) and not exact.any()  # an untrained model reproduces no answer


def test_configure_optimizers_takes_only_the_trainable_lora_parameters() -> None:
    model = load_tiny(seed=0).model
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, adapter_name="old")
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, adapter_name="new")
    mark_only_lora_as_trainable(model, "new")
    cfg = TrainConfig(lr=0.02, weight_decay=0.1)
    opt = LoRALightningModule(model, cfg).configure_optimizers()
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["lr"] == 0.02 and opt.defaults["weight_decay"] == 0.1
    got = {id(p) for g in opt.param_groups for p in g["params"]}
    want = {id(layer.lora_A["new"]) for layer in lora_layers(model).values()} | {
        id(layer.lora_B["new"]) for layer in lora_layers(model).values()
    }
    assert got == want


def test_lr_b_ratio_gives_the_b_matrices_their_own_rate() -> None:
    model = load_tiny(seed=0).model
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, adapter_name="new")
    mark_only_lora_as_trainable(model, "new")
    opt = LoRALightningModule(model, TrainConfig(lr=0.01, lr_b_ratio=4.0)).configure_optimizers()
    by_lr = {g["lr"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    layers = lora_layers(model).values()
    assert by_lr == {0.01: {id(x.lora_A["new"]) for x in layers}, 0.04: {id(x.lora_B["new"]) for x in layers}}


def test_lr_factor_warms_up_then_decays_along_a_half_cosine_to_its_floor() -> None:
    f = [lt.lr_factor(s, warmup=2, decay=4, floor=0.1) for s in range(9)]
    assert f[:2] == [0.5, 1.0]  # linear warmup: step 0 already trains
    assert f[2] == 1.0 and f[4] == pytest.approx(0.55) and f[6] == pytest.approx(0.1)  # top, half-way, floor
    assert all(a > b for a, b in zip(f[2:6], f[3:7], strict=True))  # falling until the floor
    assert f[6:] == [pytest.approx(0.1)] * 3  # then held: training has no fixed end
    assert [lt.lr_factor(s, warmup=0, decay=0, floor=0.1) for s in range(3)] == [1.0, 1.0, 1.0]


def test_a_decaying_schedule_is_stepped_by_lightning_once_per_optimizer_step(monkeypatch) -> None:
    bundle = load_tiny(seed=0)
    cfg = TrainConfig.of(lr=1e-2, warmup_steps=1, decay_steps=2, min_lr_ratio=0.25, stop_when_learned=False,
                         max_steps=4, batch_size=8, progress_bar=False)
    seen = []
    trainer = LoRATrainer(bundle, LoRAConfig(r=2, alpha=4.0), cfg)
    orig = torch.optim.AdamW.step

    def step(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])  # the rate this update uses
        return orig(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    trainer.fit(PAIRS, adapter="s")
    # warmup (1 step), the top of the cosine, half-way down (0.25 + 0.75 / 2), the floor
    assert seen == pytest.approx([1e-2, 1e-2, 6.25e-3, 2.5e-3])


def test_module_hparams_hold_config_not_the_network() -> None:
    module = LoRALightningModule(load_tiny().model, TrainConfig(lr=0.5))
    assert module.hparams["lr"] == 0.5
    assert all(not isinstance(v, torch.nn.Module) for v in module.hparams.values())


# -- config validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cls", "node", "where", "needles"),
    [
        (TrainConfig, {"lr": "fast", "batch_size": 1.5, "bogus": 1, "stop_when_learned": "yes"}, "trainer",
         ["trainer.lr='fast' should be float", "trainer.batch_size=1.5 should be int", "trainer.bogus is not a setting (known: accelerator",
          "trainer.stop_when_learned='yes' should be bool"]),
        (TrainConfig, {"lr": -1.0, "batch_size": 0, "max_steps": 0, "max_length": 4, "precision": "fp8", "lr_b_ratio": 0,
                       "warmup_steps": -1, "min_lr_ratio": 0.0},
         "trainer",
         ["trainer.lr must be > 0", "trainer.lr_b_ratio must be > 0", "trainer.warmup_steps must be >= 0",
          "trainer.min_lr_ratio must be in (0, 1]", "trainer.batch_size must be >= 1", "trainer.max_steps=0 must be an integer >= 1",
          "trainer.max_length must be >= 8", "trainer.precision='fp8' must be one of"]),
        (TrainConfig, {"max_step": 5, "callbacks": [], "devices": 0, "gradient_clip_val": "x"}, "trainer",
         ["trainer.max_step is not a setting (known: accelerator", "; did you mean trainer.max_steps?",
          "trainer.callbacks is set by autodidact", "trainer.devices=0 must be",
          "trainer.gradient_clip_val='x' must be null or a number"]),
        (LoRAConfig, {"r": 0, "alpha": 0.0, "dropout": 1.0, "target_modules": []}, "lora",
         ["lora.r must be >= 1", "lora.alpha must be > 0", "lora.dropout must be in [0, 1)",
          "lora.target_modules must name at least one layer"]),
        (LoRAConfig, {"r": "8", "target_modules": 5, "rank": 4}, "lora",
         ["lora.r='8' should be int", "lora.target_modules=5 should be", "lora.rank is not a setting"]),
    ],
    ids=["trainer-types", "trainer-values", "lightning-args", "lora-values", "lora-types"],
)
def test_config_errors_list_every_problem(cls, node: dict, where: str, needles: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        to_dataclass(cls, node, where)
    msg = str(e.value)
    assert msg.startswith(f"invalid {where} config:")
    for needle in needles:
        assert needle in msg, msg
    assert msg.count("\n  - ") == len([n for n in needles if not n.startswith("; did you mean")])


def test_config_coercions() -> None:
    cfg = to_dataclass(TrainConfig, {"lr": 1, "_target_": "lightning.Trainer", "max_steps": 7}, "trainer")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.lightning == {"_target_": "lightning.Trainer", "max_steps": 7}  # the Trainer's keys, apart
    assert cfg.max_steps == 7 and cfg.trainer_args["gradient_clip_val"] == 1.0  # defaults under them
    lora = to_dataclass(LoRAConfig, {"target_modules": "q_proj, v_proj"}, "lora")
    assert lora.target_modules == ["q_proj", "v_proj"]


def test_trainer_refuses_a_bad_config_before_touching_the_model() -> None:
    bundle = load_tiny()
    with pytest.raises(ConfigError) as e:
        LoRATrainer(bundle, LoRAConfig(r=0), TrainConfig.of(max_steps=0))
    assert "lora.r must be >= 1" in str(e.value)
    with pytest.raises(ConfigError, match="trainer.max_steps"):
        LoRATrainer(bundle, LoRAConfig(), TrainConfig.of(max_steps=0))
    assert not lora_layers(bundle.model)


@pytest.mark.parametrize(
    "overrides",
    [[], ["trainer=default"], ["trainer=gpu"], ["trainer=ddp"], ["trainer=fsdp"], ["lora=all_linear"],
     ["trainer.lr=0.5", "lora.r=4"]],
    ids=["defaults", "default-alias", "gpu", "ddp", "fsdp", "all-linear", "overrides"],
)
def test_shipped_config_groups_are_valid(overrides: list[str]) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=tiny", "logger=none", *overrides])
    tcfg = to_dataclass(TrainConfig, cfg.trainer, "trainer")
    lora = to_dataclass(LoRAConfig, cfg.lora, "lora")
    assert tcfg.seed == cfg.seed
    assert tcfg.lightning["_target_"] == "lightning.Trainer"
    if not overrides or overrides == ["trainer=default"]:
        assert tcfg.trainer_args == trainer_args.DEFAULTS  # what TrainConfig() built in code trains with
    if "trainer.lr=0.5" in overrides:
        assert tcfg.lr == 0.5 and lora.r == 4
    if "lora=all_linear" in overrides:
        assert len(lora.target_modules) == 7


@pytest.mark.parametrize(
    ("group", "strategy", "devices"),
    [("cpu", "SingleDeviceStrategy", 1), ("ddp", "DDPStrategy", 2)],
)
def test_the_trainer_group_is_a_lightning_trainer_config(group: str, strategy: str, devices: int) -> None:
    """Hydra builds a real lightning.Trainer from the group (GPU groups need a GPU to build)."""
    import lightning as L
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=tiny", "logger=none", f"trainer={group}"])
    args = to_dataclass(TrainConfig, cfg.trainer, "trainer").trainer_args
    trainer = instantiate({**args, "precision": "32-true"}, logger=False, enable_progress_bar=False)
    assert isinstance(trainer, L.Trainer)
    assert type(trainer.strategy).__name__ == strategy and trainer.num_devices == devices
    assert trainer.max_steps == 300 and trainer.gradient_clip_val == 1.0


def test_the_trainer_arguments_we_check_are_lightnings() -> None:
    """The light list (checked before Lightning loads) is the real Trainer.__init__'s parameters."""
    import inspect

    import lightning as L

    assert tuple(inspect.signature(L.Trainer.__init__).parameters)[1:] == trainer_args.TRAINER_ARGS


# -- doing less work: frozen layers once, adapters only where asked, no needless passes ----------------
@pytest.mark.parametrize("start", [1, 2, 3])
def test_the_frozen_prefix_path_computes_the_same_loss(start: int) -> None:
    """Activations cached below layer ``start`` + the layers above == the whole model, to float error."""
    bundle = load_tiny(seed=0, layers=4)
    tok, model = bundle.tokenizer, bundle.model
    inject_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, adapter_name="a")
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B["a"].normal_(0, 0.1)  # a non-identity adapter: the upper layers really differ
    examples = [encode_pair(tok, p, 256) for p in PAIRS[:5]]
    lt.FrozenPrefixCache(model, start, tok.pad_token_id)(examples)
    batch = collate(examples, tok.pad_token_id)
    assert batch["hidden"].shape == (*batch["input_ids"].shape, 64)
    with torch.no_grad():
        full = answer_loss(model, batch)
        split = answer_loss(model, batch, start)
    assert torch.allclose(full[0], split[0], atol=1e-5)
    assert torch.equal(full[1], split[1]) and torch.equal(full[2], split[2])


def test_fit_runs_the_frozen_layers_once_per_example_and_only_the_top_layers_get_adapters() -> None:
    bundle = load_tiny(seed=0, layers=4)
    calls = {i: 0 for i in range(4)}
    for i, layer in enumerate(bundle.model.model.layers):
        layer.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    cfg = TrainConfig.of(lr=1e-3, batch_size=4, max_steps=6, stop_when_learned=False, progress_bar=False)
    lora = LoRAConfig(r=2, alpha=4.0, top_layers=2, target_modules=["q_proj", "v_proj"])
    result = LoRATrainer(bundle, lora, cfg).fit(PAIRS, adapter="t")
    assert sorted(lora_layers(bundle.model)) == [f"model.layers.{i}.self_attn.{m}" for i in (2, 3)
                                                 for m in ("q_proj", "v_proj")]
    # Layers 0-1 run in one pass over the 8 examples (one chunk), which stops as it reaches layer 2
    # (hence layer 2's one extra call); layers 2-3 run in every step and evaluation.
    assert calls[0] == calls[1] == 1
    assert calls[2] - 1 == calls[3] >= result.steps == 6
    assert result.loss_initial == pytest.approx(result.losses[0])  # the first batch, before any update


@pytest.mark.parametrize(
    ("lora", "layers"),
    [
        (LoRAConfig(top_layers=None), [0, 1, 2, 3]),
        (LoRAConfig(top_layers=1), [3]),
        (LoRAConfig(top_layers=10), [0, 1, 2, 3]),  # more than the model has: every layer
        (LoRAConfig(top_layers=1, layers_to_transform=[0, 2]), [0, 2]),  # explicit indices win
    ],
    ids=["all", "top-1", "top-more-than-there-are", "explicit"],
)
def test_adapter_layers(lora: LoRAConfig, layers: list[int]) -> None:
    model = load_tiny(layers=4).model
    got = sorted({int(q.split(".")[2]) for q in lt.adapter_targets(model, lora)})
    assert got == layers
    assert lt.first_adapter_layer(model, lt.adapter_targets(model, lora)) == layers[0]


def test_layers_that_do_not_exist_are_a_config_error_before_the_model_is_touched() -> None:
    bundle = load_tiny(layers=2)
    trainer = LoRATrainer(bundle, LoRAConfig(layers_to_transform=[20, 21]), TrainConfig(progress_bar=False))
    with pytest.raises(ConfigError, match=r"selects none of the 2 decoder layers; use indices 0\.\.1"):
        trainer.fit(PAIRS, adapter="x")
    assert not lora_layers(bundle.model)


@pytest.mark.parametrize(
    ("precision", "native_bf16", "want"),
    [("auto", False, "32-true"), ("auto", True, "bf16-mixed"), ("32-true", True, "32-true"),
     ("bf16-mixed", False, "bf16-mixed")],
)
def test_precision_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch, precision, native_bf16, want) -> None:
    monkeypatch.setattr(lt, "cpu_has_native_bf16", lambda: native_bf16)
    assert lt.resolve_precision(precision, "cpu") == want


@pytest.mark.parametrize(
    ("latest", "confirm", "stops", "kept"),
    [
        ({0: True, 1: True}, True, False, 2),  # two of four examples seen: keep going
        ({0: True, 1: True, 2: False, 3: True}, True, False, 4),  # one still wrong at its latest check
        ({0: True, 1: True, 2: True, 3: True}, True, True, 4),  # all right: stop mid-epoch
        ({0: True, 1: True, 2: True, 3: True}, False, False, 0),  # the weights now fail: start over
    ],
    ids=["half-seen", "one-wrong", "all-right", "confirmation-fails"],
)
def test_stops_mid_epoch_once_every_examples_latest_check_passes(latest, confirm, stops, kept) -> None:
    from types import SimpleNamespace

    from autodidact.callbacks import ConfirmLearned, SkillLearnedStop

    module = LoRALightningModule(load_tiny().model, TrainConfig())
    module.log = lambda *a, **k: None
    check = ConfirmLearned(lambda: (0.1, 1.0 if confirm else 0.5))
    stop = SkillLearnedStop(4, check, mid_epoch=True)
    # One process: the strategy's reduce is the identity, as Lightning's single-device one is.
    trainer = SimpleNamespace(should_stop=False, global_step=5, fit_loop=SimpleNamespace(min_steps=None),
                              strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    stop._latest = dict(latest)
    stop.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.1), "exact": torch.tensor([latest[0]])},
                            {"index": torch.tensor([0])}, 0)
    assert trainer.should_stop is stops
    assert len(stop._latest) == kept
    assert check.at_step == (5 if len(latest) == 4 and all(latest.values()) else -1)  # checked only then


def test_by_default_learned_is_judged_per_whole_epoch_not_mid_epoch() -> None:
    from types import SimpleNamespace

    from autodidact.callbacks import ConfirmLearned, SkillLearnedStop

    module = LoRALightningModule(load_tiny().model, TrainConfig())
    module.log = lambda *a, **k: None
    check = ConfirmLearned(lambda: (0.1, 1.0))
    stop = SkillLearnedStop(2, check)
    trainer = SimpleNamespace(should_stop=False, global_step=5, fit_loop=SimpleNamespace(min_steps=None),
                              strategy=SimpleNamespace(reduce=lambda t, reduce_op: t))
    for i in (0, 1):  # both examples reproduced: no stop until the epoch is over
        stop.on_train_batch_end(trainer, module, {"loss": torch.tensor(0.1), "exact": torch.tensor([True])},
                                {"index": torch.tensor([i])}, i)
        assert trainer.should_stop is False and check.at_step == -1
    stop.on_train_epoch_end(trainer, module)
    assert trainer.should_stop is True and check.at_step == 5


def test_releasing_the_frozen_layers_trains_the_same_adapter_and_leaves_them_unusable() -> None:
    """``fit(release_frozen=True)`` (train.py) frees layers below the lowest adapter once their outputs
    are cached: training, validation and the final check never need them, so the run is identical."""
    cfg = TrainConfig.of(lr=1e-3, batch_size=4, max_steps=6, stop_when_learned=False, progress_bar=False)
    lora = LoRAConfig(r=2, alpha=4.0, top_layers=2)
    runs = []
    for release in (False, True):
        bundle = load_tiny(seed=0, layers=4)
        result = LoRATrainer(bundle, lora, cfg).fit(PAIRS[:6], adapter="t", val_pairs=PAIRS[6:], release_frozen=release)
        runs.append((bundle, result))
    (kept, a), (released, b) = runs
    assert (a.steps, a.losses, a.loss_final, a.exact_match) == (b.steps, b.losses, b.loss_final, b.exact_match)
    assert torch.equal(kept.model.model.layers[3].self_attn.q_proj.lora_B["t"],
                       released.model.model.layers[3].self_attn.q_proj.lora_B["t"])
    assert not list(released.model.model.layers[0].parameters())
    ids = torch.tensor([[1, 2, 3]])
    with pytest.raises(RuntimeError, match="decoder layer 0 was released"):
        released.model(input_ids=ids)


def test_dropped_pages_of_a_file_backed_tensor_read_back_from_the_file(tmp_path: Path) -> None:
    """The weights of a safetensors checkpoint are a private file mapping: dropping their pages only
    takes them out of this process's memory; read again, they are the file's values."""
    from safetensors.torch import load_file, save_file

    from autodidact.models import drop_resident_pages

    want = torch.randn(512, 1024, generator=torch.Generator().manual_seed(0))  # 2 MiB: whole pages inside
    save_file({"w": want}, tmp_path / "w.safetensors")
    got = load_file(tmp_path / "w.safetensors")["w"]
    assert torch.equal(got, want)
    assert drop_resident_pages([got]) >= 2 * 2**20 - 2 * 4096 or not sys.platform.startswith("linux")
    assert torch.equal(got, want)


def test_training_can_start_from_given_adapter_weights(fitted: Fitted) -> None:
    """A skill a new fact joins starts from its card's weights: the first loss is the trained one's."""
    from autodidact.inference.lora_layer import delete_adapter, lora_state_dict

    bundle = load_tiny(seed=0, hidden=HIDDEN)
    start = {k: v.to(torch.float16) for k, v in lora_state_dict(fitted.bundle.model, "zor").items()}
    cfg = TrainConfig.of(lr=1e-2, max_steps=3, batch_size=8, progress_bar=False, stop_when_learned=False)
    warm = LoRATrainer(bundle, LORA, cfg).fit(PAIRS, adapter="warm", start_from=start)
    assert warm.loss_initial < fitted.result.loss_initial * 0.2  # already knows what "zor" learned
    assert warm.loss_initial == pytest.approx(fitted.result.loss_final, abs=0.1)
    delete_adapter(bundle.model, "warm")
    wrong_rank = LoRAConfig(r=4, alpha=16.0, target_modules=["q_proj", "v_proj"])
    with pytest.raises(ConfigError, match="does not match the LoRA config"):
        LoRATrainer(bundle, wrong_rank, cfg).fit(PAIRS, adapter="bad", start_from=start)
    assert not any("bad" in layer.lora_A for layer in lora_layers(bundle.model).values())
