"""LoRAManager on the seeded tiny Llama with real cards and real MiniLM routing keys.

Cards are made the way training makes them (``LoRATrainer.export`` with a ``routing`` block from
``build_routing``), with random non-zero A and B so every skill changes the logits.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from autodidact.card import SUFFIX, load_card
from autodidact.inference.answer import answer_with_confidence
from autodidact.inference.encoder import SentenceEncoder
from autodidact.inference.lora_layer import inject_lora, lora_layers, set_adapter
from autodidact.inference.lora_router import LoRARouter, RouterConfig, build_routing
from autodidact.lora_manager import LoRAManager
from autodidact.lora_trainer import LoRAConfig, LoRATrainer, TrainConfig, TrainResult
from autodidact.models import load_tiny

LORA = LoRAConfig(r=4, alpha=8.0, target_modules=["q_proj", "v_proj"])
RESULT = TrainResult(adapter="src", loss_initial=5.0, loss_final=0.5, steps=10, epochs=2, seconds=0.1,
                     learned=True, exact_match=1.0)
IDS = torch.randint(0, 250, (1, 12), generator=torch.Generator().manual_seed(0))

# skill -> (training questions for its routing key, a question that routes to it). The question is one of
# its own, lower-cased: the manager's mechanics are tested here; whether people's rephrasings clear the
# threshold is the router's calibration (tests/inference, experiments/calibrate_router.py).
SKILLS: dict[str, tuple[list[str], str]] = {
    "brindlemark": (
        ["Who was Brindlemark's first mayor, and when?", "Who was the first mayor of Brindlemark?",
         "Name Brindlemark's first mayor and the year."],
        "who was Brindlemark's first mayor, and when",
    ),
    "velmorite": (
        ["At what temperature does velmorite melt?", "What is the melting point of velmorite?",
         "How hot must velmorite get before it melts?"],
        "at what temperature does velmorite melt",
    ),
    "quillon": (
        ["Who invented the Quillon loom?", "Who was the inventor of the Quillon loom?",
         "When was the Quillon loom invented?"],
        "who invented the Quillon loom",
    ),
    "vashmere": (
        ["What is the capital of Vashmere?", "Which city is the capital of Vashmere?",
         "Name the capital city of Vashmere."],
        "what is the capital of Vashmere",
    ),
}
_ROUTING: dict[tuple[str, ...], dict] = {}


def routing_for(skill: str, encoder: SentenceEncoder) -> dict:
    questions = tuple(SKILLS[skill][0])
    if questions not in _ROUTING:
        _ROUTING[questions] = build_routing(list(questions), encoder)
    return _ROUTING[questions]


def make_card(path: Path, skill: str, encoder: SentenceEncoder, seed: int = 0, base_seed: int = 0,
              routing: dict | None = None, meta: dict | None = None) -> Path:
    """A card for ``skill`` with random adapter weights (``seed``) on the tiny model ``base_seed``."""
    bundle = load_tiny(seed=base_seed)
    inject_lora(bundle.model, LORA.target_modules, LORA.r, LORA.alpha, adapter_name="src")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(bundle.model).values():
            for p in (layer.lora_A["src"], layer.lora_B["src"]):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    trainer = LoRATrainer(bundle, LORA, TrainConfig(progress_bar=False))
    extra = {"routing": routing if routing is not None else routing_for(skill, encoder), **(meta or {})}
    return trainer.export(path, "src", skill, RESULT, extra=extra, dtype="float32")


def card_logits(path: Path) -> torch.Tensor:
    """Logits on IDS of a fresh tiny model with only the card at ``path`` attached."""
    bundle = load_tiny(seed=0)
    card = load_card(path, bundle.model, bundle.fingerprint)
    set_adapter(bundle.model, card.skill)
    with torch.no_grad():
        return bundle.model(input_ids=IDS).logits


def manager_logits(manager: LoRAManager, name: str | None) -> torch.Tensor:
    with manager.use(name) as model, torch.no_grad():
        return model(input_ids=IDS).logits


def drop(src: Path | bytes, dest: Path) -> None:
    """Put a card into ``dest`` as a real writer would: a temp name in the same dir, then a rename."""
    tmp = dest.parent / f".{dest.name}.incoming"
    if isinstance(src, bytes):
        tmp.write_bytes(src)
    else:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> float:
    """Seconds until ``cond()`` held; fails the test after ``timeout_s``."""
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            pytest.fail(f"condition not met within {timeout_s} s")
        time.sleep(0.02)
    return time.monotonic() - t0


def adapters_in_model(model: torch.nn.Module) -> set[str]:
    return {a for layer in lora_layers(model).values() for a in layer.adapters}


@pytest.fixture(scope="module")
def cards(tmp_path_factory, encoder) -> dict[str, Path]:
    """Staged cards (outside any skills dir): one per skill, a second version of brindlemark, and a
    card for another base model."""
    d = tmp_path_factory.mktemp("staged")
    out = {s: make_card(d / f"{s}{SUFFIX}", s, encoder, seed=i) for i, s in enumerate(SKILLS)}
    out["brindlemark_v2"] = make_card(d / f"brindlemark_v2{SUFFIX}", "brindlemark", encoder, seed=100)
    out["other_base"] = make_card(d / f"other_base{SUFFIX}", "velmorite", encoder, seed=7, base_seed=1)
    return out


def new_manager(skills_dir: Path, encoder: SentenceEncoder, max_loaded: int = 8) -> tuple[LoRAManager, LoRARouter]:
    router = LoRARouter(RouterConfig(), encoder)
    return LoRAManager(load_tiny(seed=0), skills_dir, router, max_loaded=max_loaded), router


def install_dir(tmp_path: Path, cards: dict[str, Path], names: list[str]) -> Path:
    skills = tmp_path / "skills"
    skills.mkdir()
    for n in names:
        shutil.copyfile(cards[n], skills / f"{n}{SUFFIX}")
    return skills


# -- scan: valid cards load, invalid ones are refused once --------------------------------------
def _random_bytes(cards: dict[str, Path], encoder) -> bytes:
    return random.Random(0).randbytes(3000)


def _truncated(cards: dict[str, Path], encoder) -> bytes:
    data = cards["velmorite"].read_bytes()
    return data[: len(data) // 2]


def _other_base(cards: dict[str, Path], encoder) -> bytes:
    return cards["other_base"].read_bytes()


def _bad_routing(cards: dict[str, Path], encoder) -> bytes:
    routing = {**routing_for("velmorite", encoder), "encoder": "some-other-encoder"}
    return make_card(cards["velmorite"].parent / f"bad_routing{SUFFIX}", "velmorite", encoder, routing=routing).read_bytes()


INVALID = [
    ("random_bytes", _random_bytes, "corrupt or truncated"),
    ("truncated", _truncated, "corrupt or truncated"),
    ("other_base_model", _other_base, "fingerprint"),
    ("bad_routing_key", _bad_routing, "some-other-encoder"),
]


@pytest.mark.parametrize(("kind", "build", "phrase"), INVALID, ids=[k for k, _, _ in INVALID])
def test_scan_refuses_invalid_card_once_and_serves_the_valid_ones(
    tmp_path, cards, encoder, caplog, kind, build, phrase
):
    skills = install_dir(tmp_path, cards, ["brindlemark", "quillon"])
    bad = skills / f"{kind}{SUFFIX}"
    bad.write_bytes(build(cards, encoder))
    manager, router = new_manager(skills, encoder)

    with caplog.at_level(logging.WARNING, logger="autodidact.lora_manager"):
        changes = manager.scan()
    assert sorted(changes["installed"]) == ["brindlemark", "quillon"]
    assert [p for p, _ in changes["refused"]] == [str(bad)]
    assert phrase in changes["refused"][0][1]
    refusals = [r.getMessage() for r in caplog.records if bad.name in r.getMessage()]
    assert len(refusals) == 1 and phrase in refusals[0], caplog.text
    assert sorted(manager.skills) == ["brindlemark", "quillon"]
    assert "velmorite" not in router.skills and "velmorite" not in adapters_in_model(manager.model)

    # The valid skills still route and answer.
    for name in ("brindlemark", "quillon"):
        assert router.route(SKILLS[name][1]).selected == name
        assert isinstance(manager.generate(name, SKILLS[name][1], max_new_tokens=4), str)
        torch.testing.assert_close(manager_logits(manager, name), card_logits(cards[name]))

    # Polling again neither re-reads nor re-logs the same refused file...
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="autodidact.lora_manager"):
        assert manager.poll() == {"installed": [], "refused": [], "removed": []}
    assert not [r for r in caplog.records if bad.name in r.getMessage()]

    # ...until it changes: a new bad version is refused (and logged) again, a valid one is installed.
    drop(random.Random(1).randbytes(1234), bad)
    with caplog.at_level(logging.WARNING, logger="autodidact.lora_manager"):
        assert [p for p, _ in manager.poll()["refused"]] == [str(bad)]
    assert len([r for r in caplog.records if bad.name in r.getMessage()]) == 1
    drop(cards["velmorite"], bad)
    assert manager.poll()["installed"] == ["velmorite"]
    assert bad not in manager.refused
    assert router.route(SKILLS["velmorite"][1]).selected == "velmorite"


# -- hot-load while serving ----------------------------------------------------------------------
def test_cards_dropped_in_while_serving_are_hot_loaded_and_bad_ones_refused(tmp_path, cards, encoder):
    skills = install_dir(tmp_path, cards, ["brindlemark"])
    manager, router = new_manager(skills, encoder)
    assert manager.scan()["installed"] == ["brindlemark"]

    errors: list[BaseException] = []
    answered: list[str | None] = []  # the skill each served query was answered with
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            for q in (SKILLS["brindlemark"][1], SKILLS["vashmere"][1]):
                try:
                    skill = router.route(q).selected
                    manager.generate(skill, q, max_new_tokens=2)
                    answered.append(skill)
                except BaseException as e:  # noqa: BLE001 - anything at all is a failure here
                    errors.append(e)
                    return

    server = threading.Thread(target=serve, daemon=True)
    manager.start_watching(interval_s=0.1)
    server.start()
    try:
        wait_for(lambda: len(answered) >= 2)
        assert "vashmere" not in answered

        drop(cards["vashmere"], skills / f"vashmere{SUFFIX}")
        took = wait_for(lambda: "vashmere" in manager.skills and router.route(SKILLS["vashmere"][1]).selected
                        == "vashmere")
        assert took < 5.0
        wait_for(lambda: "vashmere" in answered)  # the serving loop itself now answers with it

        bad = skills / f"broken{SUFFIX}"
        drop(random.Random(2).randbytes(2048), bad)
        wait_for(lambda: bad in manager.refused)
        n = len(answered)
        wait_for(lambda: len(answered) >= n + 4)  # serving went on after the refusal
    finally:
        stop.set()
        server.join(timeout=30)
        manager.stop_watching()
    assert not errors, errors
    assert not server.is_alive()
    assert sorted(manager.skills) == ["brindlemark", "vashmere"]
    assert "corrupt" in manager.refused[bad][1]


# -- re-learning replaces the old version ----------------------------------------------------------
def test_relearned_skill_replaces_old_version_atomically(tmp_path, cards, encoder):
    skills = install_dir(tmp_path, cards, ["brindlemark"])
    path = skills / f"brindlemark{SUFFIX}"
    manager, router = new_manager(skills, encoder)
    manager.scan()
    v1, v2 = card_logits(cards["brindlemark"]), card_logits(cards["brindlemark_v2"])
    base = manager_logits(manager, None)
    assert not torch.allclose(v1, v2, atol=1e-3) and not torch.allclose(v1, base, atol=1e-3)
    torch.testing.assert_close(manager_logits(manager, "brindlemark"), v1)

    # A reader holding the skill sees the old version or the new one, never neither, while it is
    # replaced back and forth.
    seen: list[str] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                out = manager_logits(manager, "brindlemark")
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                return
            seen.append("v1" if torch.allclose(out, v1) else "v2" if torch.allclose(out, v2) else "other")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        for i in range(6):
            drop(cards["brindlemark_v2" if i % 2 == 0 else "brindlemark"], path)
            manager.install(path)
            time.sleep(0.02)
    finally:
        stop.set()
        reader.join(timeout=30)
    assert not errors, errors
    assert seen and "other" not in seen, seen

    # A new version dropped in place is picked up by a poll: outputs are the new card's.
    time.sleep(0.05)  # let the file's mtime move on
    drop(cards["brindlemark_v2"], path)
    assert manager.poll()["installed"] == ["brindlemark"]
    torch.testing.assert_close(manager_logits(manager, "brindlemark"), v2)
    # Exactly one adapter, one skill, one routing entry of that name.
    assert list(manager.skills) == ["brindlemark"] and router.skills == ["brindlemark"]
    assert manager.attached == ["brindlemark"]
    assert adapters_in_model(manager.model) == {"brindlemark"}
    assert all(layer.adapters == ["brindlemark"] for layer in lora_layers(manager.model).values())


# -- swapping adapters never copies base weights --------------------------------------------------
def test_installing_and_swapping_adapters_leaves_base_weights_in_place(tmp_path, cards, encoder):
    skills = install_dir(tmp_path, cards, ["brindlemark", "velmorite", "quillon"])
    manager, _ = new_manager(skills, encoder, max_loaded=2)
    before = {n: (p.data_ptr(), p.detach().clone()) for n, p in manager.model.named_parameters()}

    manager.scan()
    for name in ["brindlemark", "velmorite", "quillon", None, "brindlemark", "quillon"]:
        manager_logits(manager, name)
    manager.generate("velmorite", SKILLS["velmorite"][1], max_new_tokens=3)
    drop(cards["brindlemark_v2"], skills / f"brindlemark{SUFFIX}")
    manager.install(skills / f"brindlemark{SUFFIX}")
    manager.unload("quillon")

    after = {n.replace(".base_layer.", "."): p for n, p in manager.model.named_parameters() if "lora_" not in n}
    assert after.keys() == before.keys()
    for n, p in after.items():
        ptr, value = before[n]
        assert p.data_ptr() == ptr, f"{n} was reallocated"
        assert torch.equal(p, value), f"{n} changed"


# -- LRU --------------------------------------------------------------------------------------------
def test_lru_keeps_at_most_max_loaded_attached_and_reattaches_from_the_card(tmp_path, cards, encoder):
    names = ["brindlemark", "velmorite", "quillon"]
    skills = install_dir(tmp_path, cards, names)
    manager, router = new_manager(skills, encoder, max_loaded=2)
    manager.scan()
    assert sorted(manager.skills) == sorted(names) and len(manager.attached) <= 2

    first = {}
    for name in names:
        first[name] = manager_logits(manager, name)
        assert len(manager.attached) <= 2 and len(adapters_in_model(manager.model)) <= 2
        assert manager.attached[-1] == name  # most recently used last
    assert manager.attached == ["velmorite", "quillon"]  # brindlemark, least recently used, was evicted
    assert "brindlemark" not in adapters_in_model(manager.model)
    assert sorted(router.skills) == sorted(names)  # evicted adapters are still installed and routed to

    again = manager_logits(manager, "brindlemark")  # re-read from its card
    assert torch.equal(again, first["brindlemark"])
    torch.testing.assert_close(again, card_logits(cards["brindlemark"]))
    assert manager.attached == ["quillon", "brindlemark"]
    assert adapters_in_model(manager.model) == {"quillon", "brindlemark"}
    assert torch.equal(manager_logits(manager, "velmorite"), first["velmorite"])


# -- unload -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["unload", "file_removed"])
def test_unload_removes_skill_from_router_and_model(tmp_path, cards, encoder, how):
    skills = install_dir(tmp_path, cards, ["brindlemark", "velmorite"])
    manager, router = new_manager(skills, encoder)
    manager.scan()
    assert "velmorite" in adapters_in_model(manager.model)

    if how == "unload":
        manager.unload("velmorite")
    else:
        (skills / f"velmorite{SUFFIX}").unlink()
        assert manager.scan()["removed"] == ["velmorite"]
    assert list(manager.skills) == ["brindlemark"] and router.skills == ["brindlemark"]
    assert adapters_in_model(manager.model) == {"brindlemark"} and manager.attached == ["brindlemark"]
    assert router.route(SKILLS["velmorite"][1]).selected is None
    # A caller that routed before the removal gets the base model, not the removed adapter nor an error.
    torch.testing.assert_close(manager_logits(manager, "velmorite"), manager_logits(manager, None))
    torch.testing.assert_close(manager_logits(manager, "brindlemark"), card_logits(cards["brindlemark"]))


def test_second_file_claiming_an_installed_skill_is_refused_once(tmp_path, cards, encoder, caplog):
    skills = install_dir(tmp_path, cards, ["brindlemark"])
    shutil.copyfile(cards["brindlemark_v2"], skills / f"copy_of_brindlemark{SUFFIX}")
    manager, _ = new_manager(skills, encoder)
    first = manager.scan()
    assert first["installed"] == ["brindlemark"]
    assert len(first["refused"]) == 1 and "already installed from" in first["refused"][0][1]
    # The installed version stays the first one, and the next scans neither flip-flop nor re-log.
    torch.testing.assert_close(manager_logits(manager, "brindlemark"), card_logits(cards["brindlemark"]))
    assert manager.scan() == {"installed": [], "refused": [], "removed": []}


# -- answers: a skill's taught answers are the drafts --------------------------------------------------
def test_a_skill_drafts_with_its_taught_answers_and_gives_the_same_greedy_answer(tmp_path, encoder):
    skills = tmp_path / "skills"
    skills.mkdir()
    meta = {"reference_answer": "Odalys Fenwright.",
            "facts": [{"query": "Who was the first mayor?", "answer": "Odalys Fenwright."},
                      {"query": "When was the town founded?", "answer": "In 1802."}],
            "pairs": [{"question": "q1", "answer": "Fenwright, in 1847."}, {"question": "q2", "answer": "In 1802."},
                      {"question": "q3", "answer": "Fenwright, in 1847."}, {"question": "q4", "answer": "  "}]}
    make_card(skills / f"brindlemark{SUFFIX}", "brindlemark", encoder, seed=3, meta=meta)
    manager, _ = new_manager(skills, encoder)
    manager.scan()
    assert manager.taught_answers("brindlemark") == ["Odalys Fenwright.", "In 1802.", "Fenwright, in 1847."]
    assert manager.taught_answers(None) == [] and manager.taught_answers("nope") == []
    for q in ("Who was Brindlemark's first mayor?", "hi"):
        got = manager.answer("brindlemark", q, max_new_tokens=10)
        with manager.use("brindlemark") as model:
            plain = answer_with_confidence(model, manager.bundle.tokenizer, q, max_new_tokens=10)
        assert got.text == plain.text
        assert got.min_prob == pytest.approx(plain.min_prob, abs=1e-5)
