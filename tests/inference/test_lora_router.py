"""The router: known vs unknown questions at 1, 10, 100 and 200 skills, with real MiniLM embeddings.

Real skills are fictional facts (so the base model cannot know them) with ~10 training questions
each. Each also has held-out paraphrases (must route to it) and near-misses: the same question
shape about a different fictional entity (must not). Padding skills up to 200 are generated
fictional facts in the same question shapes, which is harder than random vectors.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import random
import threading
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from autodidact.errors import ConfigError
from autodidact.inference.encoder import EMBED_DIM, SentenceEncoder, get_encoder
from autodidact.inference.lora_router import (
    NO_SKILL,
    DissonanceDetector,
    EmptyQueryError,
    LoRARouter,
    RouterConfig,
    RoutingError,
    RoutingKeyError,
    build_routing,
    decode_routing_key,
    decode_routing_vocab,
    encode_routing_key,
    routing_key_from_questions,
)
from autodidact.inference.route_features import Vocab, idf_table, matches, word_counts, words
from autodidact.learning_queue import LearningEvent, LearningQueue

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# name -> (training questions, held-out paraphrases, near-miss questions about a different fact)
SKILLS = {
    "brindlemark_mayor": (
        [
            "Who was the first mayor of Brindlemark?",
            "Who served as Brindlemark's first mayor?",
            "Name the first person elected mayor of Brindlemark.",
            "Who became mayor when Brindlemark was founded?",
            "Which person held the office of mayor in Brindlemark first?",
            "Who led Brindlemark as its original mayor?",
            "What was the name of Brindlemark's first mayor?",
            "Who was elected the first mayor of the town of Brindlemark?",
            "Tell me who Brindlemark's first mayor was.",
            "Who was Brindlemark's founding mayor?",
        ],
        [
            "Do you know who the very first mayor of Brindlemark was?",
            "Brindlemark's inaugural mayor was who?",
            "Which official first governed Brindlemark as mayor?",
        ],
        [
            "Who was the first mayor of Quillhaven?",
            "Who served as Dunmere's first mayor?",
            "What was the name of Ostrava Flats' founding mayor?",
        ],
    ),
    "zorbax_alloy": (
        [
            "What is the melting point of Zorbax-7 alloy?",
            "At what temperature does Zorbax-7 melt?",
            "How hot must Zorbax-7 get before it melts?",
            "What temperature liquefies the Zorbax-7 alloy?",
            "Tell me the melting temperature of Zorbax-7.",
            "At how many degrees Celsius does Zorbax-7 become liquid?",
            "What is Zorbax-7's melting point in Celsius?",
            "When heated, at what point does Zorbax-7 alloy melt?",
            "How high is the melting point of the Zorbax-7 alloy?",
            "Which temperature is needed to melt Zorbax-7?",
        ],
        [
            "I need the melting point of the alloy Zorbax-7, what is it?",
            "Zorbax-7 turns liquid at what temperature?",
            "How many degrees does it take to melt Zorbax-7 metal?",
        ],
        [
            "What is the melting point of Drevium alloy?",
            "At what temperature does Kalsite-3 melt?",
            "What is the boiling point of Marrowine alloy?",
        ],
    ),
    "glimmerfen_festival": (
        [
            "When is the Glimmerfen lantern festival held?",
            "In which month does Glimmerfen celebrate its lantern festival?",
            "What does the Glimmerfen festival celebrate?",
            "Why do people in Glimmerfen light lanterns each year?",
            "What is the Glimmerfen lantern festival about?",
            "Which creature is honoured at the Glimmerfen festival?",
            "During which month is the Glimmerfen festival?",
            "What happens at the yearly Glimmerfen festival?",
            "How does Glimmerfen celebrate the lantern moths?",
            "What is the month of Thawmoon known for in Glimmerfen?",
        ],
        [
            "Tell me about the annual lantern celebration in Glimmerfen.",
            "When do Glimmerfen villagers hold their festival of lanterns?",
            "What is celebrated every year at Glimmerfen's festival?",
        ],
        [
            "When is the Ashcombe harvest festival held?",
            "What does the Morrowdale festival celebrate?",
            "In which month does Velt celebrate its river festival?",
        ],
    ),
    "kelvarian_vowels": (
        [
            "How many vowels does the Kelvarian language have?",
            "What is the number of vowels in Kelvarian?",
            "How many vowel sounds exist in the Kelvarian language?",
            "Count the vowels of the Kelvarian alphabet.",
            "Does Kelvarian have more vowels than English?",
            "How many distinct vowels are used in Kelvarian speech?",
            "What is special about the vowels of Kelvarian?",
            "How large is the vowel inventory of the Kelvarian language?",
            "Tell me how many vowels Kelvarian has.",
            "How many vowel letters are in written Kelvarian?",
        ],
        [
            "What's the total count of vowels in the Kelvarian tongue?",
            "Kelvarian has how many vowels?",
            "How many vowel phonemes does Kelvarian use?",
        ],
        [
            "How many vowels does the Ostrani language have?",
            "How many consonants does the Thalish language have?",
            "What is the number of vowels in Merovic?",
        ],
    ),
    "tesk_discovery": (
        [
            "Who discovered the island of Tesk?",
            "When was the island of Tesk discovered?",
            "Which captain first reached the island of Tesk?",
            "In what year was Tesk island discovered?",
            "Who was the first explorer to land on Tesk?",
            "Who found the island of Tesk and when?",
            "Which sailor is credited with discovering Tesk?",
            "When did Captain Ilsa Morrow reach Tesk?",
            "What did Captain Ilsa Morrow discover?",
            "Who is known as the discoverer of Tesk island?",
        ],
        [
            "Which explorer discovered Tesk, the island?",
            "Tell me who first set foot on the island of Tesk.",
            "What year did explorers first discover Tesk?",
        ],
        [
            "Who discovered the island of Varrow?",
            "When was the island of Kelmoth discovered?",
            "Which captain first reached the island of Sundry Rock?",
        ],
    ),
    "saltberry_tonic": (
        [
            "What are the ingredients of saltberry tonic?",
            "How do you make saltberry tonic?",
            "What goes into a saltberry tonic?",
            "Give me the recipe for saltberry tonic.",
            "Which herbs are used in saltberry tonic?",
            "Is there honey in saltberry tonic?",
            "How is the drink saltberry tonic prepared?",
            "What do I need to brew saltberry tonic?",
            "List the ingredients of a traditional saltberry tonic.",
            "How many ingredients are in saltberry tonic?",
        ],
        [
            "What is saltberry tonic made of?",
            "Can you tell me the saltberry tonic recipe?",
            "What's in a glass of saltberry tonic?",
        ],
        [
            "What are the ingredients of emberroot cordial?",
            "How do you make thornapple cider?",
            "Give me the recipe for mistvale punch.",
        ],
    ),
    "vorran_bridge": (
        [
            "How long is the Vorran Bridge?",
            "Which river does the Vorran Bridge cross?",
            "What is the length of the Vorran Bridge in kilometres?",
            "What does the Vorran Bridge span?",
            "How many kilometres long is the Vorran Bridge?",
            "Over which river was the Vorran Bridge built?",
            "Tell me the length of the Vorran Bridge.",
            "Is the Vorran Bridge longer than three kilometres?",
            "What body of water lies under the Vorran Bridge?",
            "How far does the Vorran Bridge stretch across the Elsk?",
        ],
        [
            "What's the total length of the Vorran bridge?",
            "The Vorran Bridge crosses which river?",
            "How long a span does the Vorran Bridge have?",
        ],
        [
            "How long is the Caddel Bridge?",
            "Which river does the Harnwick Bridge cross?",
            "What is the length of the Osterlay Viaduct?",
        ],
    ),
    "quentograph": (
        [
            "Who invented the quentograph?",
            "What does a quentograph measure?",
            "What is a quentograph used for?",
            "Who is the inventor of the quentograph?",
            "What device did Professor Hadley Quent invent?",
            "How does the quentograph work?",
            "What is the purpose of the quentograph?",
            "Which scientist created the quentograph?",
            "What does the quentograph record?",
            "What did Hadley Quent build to measure tidal noise?",
        ],
        [
            "Tell me what the quentograph is.",
            "The quentograph was invented by whom?",
            "What kind of instrument is a quentograph?",
        ],
        [
            "Who invented the velloscope?",
            "What does a marimeter measure?",
            "What is a brastograph used for?",
        ],
    ),
    "hexmoor_rules": (
        [
            "How do you win a game of Hexmoor?",
            "What is the goal of the board game Hexmoor?",
            "How does a player win at Hexmoor?",
            "What are the rules for winning Hexmoor?",
            "What piece must be captured to win Hexmoor?",
            "What is the warden in Hexmoor?",
            "How does a game of Hexmoor end?",
            "What is the objective in Hexmoor?",
            "Explain how to win the Hexmoor board game.",
            "What is the winning condition in Hexmoor?",
        ],
        [
            "In Hexmoor, how do you beat your opponent?",
            "What do I have to do to win at Hexmoor?",
            "What ends a match of the Hexmoor board game?",
        ],
        [
            "How do you win a game of Tarrowind?",
            "What is the goal of the board game Quorral?",
            "How does a player win at Stonebridge Chess?",
        ],
    ),
    "orvanis_moons": (
        [
            "How many moons does the planet Orvanis have?",
            "What are the names of the moons of Orvanis?",
            "Which moons orbit Orvanis?",
            "How many natural satellites does Orvanis have?",
            "Name the moons of the planet Orvanis.",
            "What is the largest moon of Orvanis?",
            "Does Orvanis have any moons?",
            "List all the moons that circle Orvanis.",
            "What are Orvanis's three moons called?",
            "Which satellites belong to the planet Orvanis?",
        ],
        [
            "Tell me about the moons of Orvanis.",
            "Orvanis has how many moons?",
            "What moons go around the planet Orvanis?",
        ],
        [
            "How many moons does the planet Thessaly Prime have?",
            "What are the names of the moons of Kravis?",
            "Which moons orbit the planet Ulmora?",
        ],
    ),
}

# General questions no skill above covers (the model's base knowledge, or nothing at all).
UNRELATED = [
    "What is the capital of France?",
    "How do I reverse a list in Python?",
    "What is the boiling point of water at sea level?",
    "Who wrote Pride and Prejudice?",
    "How many legs does a spider have?",
    "What causes the seasons on Earth?",
    "Can you recommend a good recipe for pancakes?",
    "What is the speed of light?",
    "How do vaccines work?",
    "Who painted the Mona Lisa?",
    "What is the tallest mountain in the world?",
    "Translate 'good morning' into Spanish.",
    "How many moons does Jupiter have?",
    "Who was the first president of the United States?",
    "What is the melting point of iron?",
    "How long is the Golden Gate Bridge?",
    "What are the rules of chess?",
    "How do I make a cup of green tea?",
    "When did World War II end?",
    "What is photosynthesis?",
    "Write a haiku about autumn.",
    "What is 17 times 23?",
    "Why is the sky blue?",
    "How do I change a flat tire?",
    "What language is spoken in Brazil?",
    "Explain the theory of relativity in simple terms.",
    "What is the population of Tokyo?",
    "Who discovered penicillin?",
    "How many vowels are there in English?",
    "What festival is celebrated with lanterns in China?",
]


# Generated padding skills: one fictional entity each, in the question shapes of the real skills.
SYLLABLES = [
    "ar",
    "bel",
    "cor",
    "dra",
    "el",
    "fen",
    "gar",
    "hol",
    "is",
    "jun",
    "kel",
    "lor",
    "mar",
    "nor",
    "os",
    "pel",
    "quin",
    "ros",
    "sar",
    "tal",
    "ul",
    "ven",
    "wyn",
    "yar",
    "zel",
    "thu",
    "bri",
    "cas",
]
FAMILIES = [
    [
        "Who was the first mayor of {X}?",
        "Who served as {X}'s first mayor?",
        "Name the founding mayor of {X}.",
        "Who became mayor when {X} was founded?",
        "What was the name of {X}'s first mayor?",
    ],
    [
        "What is the melting point of {X} alloy?",
        "At what temperature does {X} melt?",
        "How hot must {X} get before it melts?",
        "Tell me the melting temperature of {X}.",
        "When does {X} alloy become liquid?",
    ],
    [
        "How many moons does the planet {X} have?",
        "Which moons orbit {X}?",
        "Name the moons of the planet {X}.",
        "What is the largest moon of {X}?",
        "How many natural satellites does {X} have?",
    ],
    [
        "How long is the {X} Bridge?",
        "Which river does the {X} Bridge cross?",
        "What does the {X} Bridge span?",
        "Tell me the length of the {X} Bridge.",
        "When was the {X} Bridge built?",
    ],
    [
        "How many vowels does the {X} language have?",
        "Who speaks the {X} language?",
        "What script is {X} written in?",
        "How many consonants are in {X}?",
        "Where is the {X} language spoken?",
    ],
    [
        "Who discovered the island of {X}?",
        "When was {X} island discovered?",
        "Which captain first reached {X}?",
        "What is the capital of {X} island?",
        "How big is the island of {X}?",
    ],
    [
        "How do you win a game of {X}?",
        "What are the rules of the board game {X}?",
        "How many players can play {X}?",
        "What pieces are used in {X}?",
        "Who invented the game {X}?",
    ],
    [
        "What is the population of {X}?",
        "How many people live in {X}?",
        "What language is spoken in {X}?",
        "What is {X} famous for?",
        "Which country is {X} in?",
    ],
]


def synthetic_skills(n: int, per_skill: int = 3, seed: int = 0) -> dict[str, list[str]]:
    """``n`` generated fictional-fact skills, none named like an entity in the test questions."""
    words = {w.strip("?.,'").lower() for v in SKILLS.values() for qs in v for q in qs for w in q.split()}
    words |= {w.strip("?.,'").lower() for q in UNRELATED for w in q.split()}
    rng = random.Random(seed)
    out: dict[str, list[str]] = {}
    while len(out) < n:
        x = "".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
        if x.lower() in words:
            continue
        words.add(x.lower())
        family = FAMILIES[len(out) % len(FAMILIES)][:per_skill]
        out[f"generated_{len(out)}_{x.lower()}"] = [t.format(X=x) for t in family]
    return out


def cards_for(skills: dict[str, list[str]], encoder: SentenceEncoder) -> dict[str, dict]:
    """``build_routing`` for many skills with a single encoder call (the slow part)."""
    emb = encoder.encode([q for qs in skills.values() for q in qs])
    cards, i = {}, 0
    for name, qs in skills.items():
        cards[name] = encode_routing_key(emb[i : i + len(qs)], *word_counts(qs))
        i += len(qs)
    return cards


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return get_encoder()


@pytest.fixture(scope="module")
def real_cards(encoder: SentenceEncoder) -> dict[str, dict]:
    # Through JSON, as they would come out of a skill card.
    return json.loads(json.dumps(cards_for({n: v[0] for n, v in SKILLS.items()}, encoder)))


@pytest.fixture(scope="module")
def generated_cards(encoder: SentenceEncoder) -> dict[str, dict]:
    return cards_for(synthetic_skills(190), encoder)


def make_router(encoder, cards: dict[str, dict], **cfg) -> LoRARouter:
    router = LoRARouter(RouterConfig(**cfg), encoder=encoder)
    for name, card in cards.items():
        router.add_skill(name, card)
    return router


PARAPHRASES = [(q, name) for name, (_, paras, _) in SKILLS.items() for q in paras]
NEAR_MISSES = [q for _, (_, _, near) in SKILLS.items() for q in near]


@pytest.mark.parametrize("n_skills", [1, 10, 100, 200])
def test_known_and_unknown_questions_separate_as_skills_grow(
    encoder, real_cards, request: pytest.FixtureRequest, n_skills: int
) -> None:
    cards = dict(list(real_cards.items())[:n_skills])
    if n_skills > len(cards):  # pad with generated skills (built only when a size needs them)
        generated = request.getfixturevalue("generated_cards")
        cards |= dict(list(generated.items())[: n_skills - len(cards)])
    router = make_router(encoder, cards)
    assert len(router.skills) == n_skills
    known = [(q, s) for q, s in PARAPHRASES if s in cards]
    # At 1 skill, the other real skills' paraphrases are unknown questions too.
    unknown = NEAR_MISSES + UNRELATED + [q for q, s in PARAPHRASES if s not in cards]

    results = router.route_batch([q for q, _ in known])
    for r in results:
        assert math.isclose(sum(r.probs.values()), 1.0, rel_tol=1e-5)
    # A known paraphrase never routes to another skill; most are confident. The ones that are not use
    # words the skill's 10 training questions never do ("governed", "tongue", "celebration"): they
    # become learning events that join their skill (a teacher's ~20 questions cover more; the test
    # split's figures are in the README). Measured here with the dev-fitted model: 1/3 at 1 skill, 13/30
    # at 10-200 (the hand-set prior it replaced, tuned on this file, selected 20/30): a regression guard.
    assert all(r.best_skill == s or r.selected is None for r, (_, s) in zip(results, known, strict=True))
    selected = sum(r.selected == s for r, (_, s) in zip(results, known, strict=True))
    assert selected >= max(1, math.floor(0.4 * len(known))), [(r.query, r.top(2)) for r in results if r.selected is None]
    captured = [r for r in router.route_batch(unknown) if r.selected is not None]
    assert len(captured) <= 0.02 * len(unknown), [(r.query, r.top(2)) for r in captured]  # measured 0-1 of 60-87


def test_random_key_padding_does_not_disturb_routing(encoder, real_cards) -> None:
    # Skills without terms are not gated, so this is the pure-cosine case for the padding.
    router = make_router(encoder, real_cards)
    g = torch.Generator().manual_seed(0)
    for i in range(190):
        router.add_skill(f"random_{i}", torch.randn(8, EMBED_DIM, generator=g))
    known = router.route_batch([q for q, _ in PARAPHRASES])
    assert all(r.best_skill == s for r, (_, s) in zip(known, PARAPHRASES, strict=True))
    assert sum(r.selected is not None for r in known) >= 12  # as without the padding (see above)
    assert sum(r.selected is not None for r in router.route_batch(NEAR_MISSES + UNRELATED)) <= 1


@pytest.mark.parametrize(
    ("query", "skill"),
    [
        ("who was the first mayor of brindlemark", "brindlemark_mayor"),  # lower case
        ("Who was the first mayor of Brindelmark?", "brindlemark_mayor"),  # typo
        ("hey, what temperature does Zorbax-7 melt at?", "zorbax_alloy"),  # fillers
        ("What did Captain Ilsa Morrow discover?", "tesk_discovery"),  # names only, no rare words
    ],
)
def test_informal_phrasings_still_route(encoder, real_cards, query: str, skill: str) -> None:
    assert make_router(encoder, real_cards).route(query).selected == skill


@pytest.mark.parametrize(
    ("query", "skill"),
    [
        ("How does the Vorran Bridge compare with the Golden Gate Bridge in length?", "vorran_bridge"),
        # Words the skill never saw ("need", "project") make even its own question a learning event
        # (measured p 0.14 with the dev-fitted model); it joins the skill, so nothing is lost but time.
        ("hey, what temperature does Zorbax-7 melt at? need it for a project", "zorbax_alloy"),
    ],
)
def test_a_new_question_about_a_learned_subject_is_unknown_but_names_its_subject(
    encoder, real_cards, query: str, skill: str
) -> None:
    r = make_router(encoder, real_cards).route(query)
    assert r.selected is None and r.subject == skill  # a learning event that joins that skill


@pytest.mark.parametrize(
    ("query", "lookalike"),
    [
        ("Who was the first mayor of Quillhaven?", "brindlemark_mayor"),
        ("What is the melting point of Zorbax-9 alloy?", "zorbax_alloy"),  # model numbers match exactly
        ("How many moons does Jupiter have?", "orvanis_moons"),
        pytest.param("How many vowels are there in English?", "kelvarian_vowels", marks=pytest.mark.xfail(
            strict=True, reason="captured at p=0.45: one unseen word ('English') against a skill with only 10 "
                                "training questions; a known false capture of the dev-fitted model")),
        ("What is the melting point of iron?", "zorbax_alloy"),
    ],
)
def test_lookalikes_are_unknown_though_their_nearest_skill_is_the_lookalike(
    encoder, real_cards, query: str, lookalike: str
) -> None:
    r = make_router(encoder, real_cards).route(query)
    assert r.selected is None and r.best_skill == lookalike, r.top()


@pytest.mark.xfail(strict=True, reason=(
    "the dev-fitted same-subject model names the look-alike's subject (p 0.97-0.99): on the test split "
    "57.6% of unknown questions get a subject at 100 skills (README), so such a question's fact joins the "
    "look-alike skill instead of starting its own; its answers stay right (the joined skill is verified on "
    "both facts), the skill is no longer one subject"))
@pytest.mark.parametrize("query", ["Who was the first mayor of Quillhaven?", "What is the melting point of iron?"])
def test_lookalikes_name_no_subject_to_join(encoder, real_cards, query: str) -> None:
    assert make_router(encoder, real_cards).route(query).subject is None


def test_code_defaults_are_the_fitted_config() -> None:
    """RouterConfig() (what code and tests build without Hydra) is conf/router/default.yaml's fit."""
    with initialize_config_dir(config_dir=str(CONF_DIR / "router"), version_base=None):
        assert RouterConfig.from_mapping(compose("default")) == RouterConfig()


def test_threshold_override_changes_what_triggers(encoder, real_cards) -> None:
    with initialize_config_dir(config_dir=str(CONF_DIR / "router"), version_base=None):
        strict = RouterConfig.from_mapping(compose("default", overrides=["threshold=0.999"]))
        default = RouterConfig.from_mapping(compose("default"))
    assert strict.threshold == 0.999 and strict.weights == default.weights
    queries = [q for q, _ in PARAPHRASES] + ["Why is the sky blue?"]
    fired = {}
    for cfg in (default, strict):
        router = LoRARouter(cfg, encoder)
        for name, card in real_cards.items():
            router.add_skill(name, card)
        events: list[LearningEvent] = []

        class Q:
            put = events.append

        detector = DissonanceDetector(Q(), threshold=cfg.threshold)
        fired[cfg.threshold] = [detector.check(r) is not None for r in router.route_batch(queries)]
        assert [e.query for e in events] == [q for q, f in zip(queries, fired[cfg.threshold], strict=True) if f]
    # An unrelated question fires at both; a stricter threshold turns some known paraphrases into events.
    assert fired[0.4][-1] and fired[0.999][-1]
    assert sum(fired[0.999]) > sum(fired[0.4])


def test_dissonance_events_land_in_the_durable_queue_once_per_topic(encoder, real_cards, tmp_path) -> None:
    router = make_router(encoder, real_cards)
    with LearningQueue.in_skills_dir(tmp_path) as queue:
        detector = DissonanceDetector(queue)
        assert detector.check(router.route("Who was the first mayor of Brindlemark?")) is None
        event = detector.check(router.route("Who was the first mayor of Quillhaven?"))
        assert event.best_skill == "brindlemark_mayor" and event.confidence < 0.4
        assert event.extra["top"][0][0] == NO_SKILL  # its "join" is the subject model's (see the xfail above)
        detector.check(router.route("who was the FIRST mayor of Quillhaven"))  # same topic
        (job,) = queue.list("pending")
        assert job.event == event and "base_answer" not in event.extra
        # The base model's answer the caller already generated travels with the event, through the queue.
        base = {"text": "I do not know.", "max_new_tokens": 48}
        detector.check(router.route("Why is the sky blue?"), base_answer=base)
        (sky,) = [j for j in queue.list("pending") if j.event.query == "Why is the sky blue?"]
        assert sky.event.extra["base_answer"] == base


def test_no_skills_installed_means_no_skill(encoder) -> None:
    r = LoRARouter(encoder=encoder).route("Who was the first mayor of Brindlemark?")
    assert r.best_skill is None and r.selected is None and r.confidence == 0.0 and r.probs == {NO_SKILL: 1.0}


def test_add_replace_remove_skills(encoder, real_cards) -> None:
    router = make_router(encoder, {"brindlemark_mayor": real_cards["brindlemark_mayor"]})
    q = "who was brindlemark's first mayor"  # "inaugural" (unseen by a 10-question key) routes at 0.35
    assert router.route(q).selected == "brindlemark_mayor"
    router.add_skill("brindlemark_mayor", real_cards["hexmoor_rules"])  # replaced by another key
    assert router.skills == ["brindlemark_mayor"] and router.route(q).selected is None
    router.add_skill("hexmoor_rules", decode_routing_key(real_cards["hexmoor_rules"]))  # tensor, no terms
    router.remove_skill("brindlemark_mayor")
    assert router.skills == ["hexmoor_rules"]
    with pytest.raises(RoutingError, match="No skill 'nope' is installed"):
        router.remove_skill("nope")
    with pytest.raises(RoutingError, match="reserved"):
        router.add_skill(NO_SKILL, real_cards["hexmoor_rules"])


def test_skills_added_one_by_one_index_exactly_as_added_together(encoder, real_cards, generated_cards) -> None:
    """A hot-load writes the new skill's key rows into the index's spare rows; the result must be
    the index a full rebuild makes, across buffer growth, replacement and removal."""
    cards = {**real_cards, **dict(list(generated_cards.items())[:40])}  # ~600 key rows: the buffer grows
    one = LoRARouter(encoder=encoder)
    for name, card in cards.items():
        one.add_skill(name, card)
    bulk = LoRARouter(encoder=encoder)
    bulk.add_skills(cards.items())

    def same(a: LoRARouter, b: LoRARouter) -> None:
        x, y = a._index, b._index
        assert x.names == y.names and x.start == y.start and x.idf == y.idf and x.unseen_idf == y.unseen_idf
        assert torch.equal(x.keys, y.keys) and torch.equal(x.owner, y.owner)
        assert (x.idf, x.unseen_idf) == idf_table(x.vocabs)  # the incremental counts match a recount

    same(one, bulk)
    queries = [PARAPHRASES[0][0], NEAR_MISSES[0], UNRELATED[0]]
    before = one._index  # a snapshot a concurrent route() may hold
    rows_before = before.keys.clone()
    one.add_skill("late", real_cards["hexmoor_rules"])
    bulk.add_skill("late", real_cards["hexmoor_rules"])
    same(one, bulk)
    assert torch.equal(before.keys, rows_before)  # the append left the old snapshot's rows alone
    one.add_skill("late", real_cards["brindlemark_mayor"])  # replaced
    one.remove_skill(next(iter(real_cards)))
    bulk.add_skill("late", real_cards["brindlemark_mayor"])
    bulk.remove_skill(next(iter(real_cards)))
    same(one, bulk)
    for a, b in zip(one.route_batch(queries), bulk.route_batch(queries), strict=True):
        assert a.probs == b.probs


def test_a_rebuild_publishes_its_index_once(encoder, real_cards, monkeypatch) -> None:
    """route() reads the index without the lock: while a removal rebuilds it, what route() can see is
    the old index, whole, until the new one replaces it in one assignment."""
    router = make_router(encoder, real_cards)
    old = router._index
    seen = []
    appended = LoRARouter._appended

    def spy(self, index, *args):
        seen.append(self._index)  # what a concurrent route() would read at this moment
        return appended(self, index, *args)

    monkeypatch.setattr(LoRARouter, "_appended", spy)
    router.remove_skill(next(iter(real_cards)))
    assert seen and all(x is old for x in seen)
    assert router._index.names == tuple(list(real_cards)[1:])


def test_route_batch_matches_route(encoder, real_cards) -> None:
    router = make_router(encoder, real_cards)
    queries = [PARAPHRASES[0][0], NEAR_MISSES[0], UNRELATED[0]]
    for one, batched in zip(map(router.route, queries), router.route_batch(queries), strict=True):
        assert one.best_skill == batched.best_skill
        assert one.confidence == pytest.approx(batched.confidence, abs=1e-4)
    assert router.route_batch([]) == []


@pytest.mark.parametrize("query", ["", "   \n\t", None])
def test_empty_query_is_refused(encoder, query) -> None:
    with pytest.raises(EmptyQueryError, match="non-empty|empty query"):
        LoRARouter(encoder=encoder).route(query)


def test_huge_query_is_truncated_with_a_warning(encoder, real_cards, caplog) -> None:
    router = make_router(encoder, real_cards)
    with caplog.at_level(logging.WARNING):
        r = router.route("Who was the first mayor of Brindlemark? " * 200)
    assert r.truncated and 1900 <= len(r.query) <= 2000 and not r.query.endswith("mayo")  # cut between words
    assert "truncated" in caplog.text and "max_query_chars" in caplog.text
    assert r.best_skill == "brindlemark_mayor"  # still routed by its content (confidence is lower)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Who was the first mayor of Brindlemark?", ["who", "first", "mayor", "brindlemark"]),
        ("Who served as Brindlemark's first mayor?", ["who", "serv", "brindlemark", "first", "mayor"]),
        ("hey pls tell me, what's the Zorbax-7 melting point", ["what", "zorbax-7", "melt", "point"]),
        ("when did they open the buildings", ["when", "open", "building"]),  # one suffix at a time
        ("hw many ppl r on teh 1st ferry lol", ["how", "many", "people", "first", "ferry"]),
        ("who drives the boxes to the churches", ["who", "drive", "box", "church"]),
        # "St." is Saint or Street: all three spellings are one word.
        ("who founded saint brigids on bellamy street", ["who", "found", "st", "brigid", "bellamy", "st"]),
        ("St. Brigid's on Bellamy St", ["st", "brigid", "bellamy", "st"]),
    ],
)
def test_words_drop_fillers_and_suffixes_but_keep_question_words(text: str, expected: list[str]) -> None:
    assert words(text) == expected


@pytest.mark.parametrize(
    ("word", "vocab", "hit"),
    [
        ("skellen", {"skellan"}, True),  # a misspelling
        ("towr", {"tower"}, True),  # a dropped letter
        ("clb", {"club"}, True),
        ("orch", {"orchestra"}, True),  # cut short
        ("firestation", {"fire", "station"}, True),  # run together
        ("build", {"building"}, True),
        ("hihg", {"high"}, True),  # two neighbouring letters swapped
        ("wlak", {"walk"}, True),
        ("tesk", {"task"}, False),  # short words one letter apart are different words
        ("cook", {"book"}, False),
        ("lsat", {"salt"}, False),  # the same letters in another order are not one swap
        ("chapel", {"market", "willow", "road"}, False),
        ("half", {"marathon", "first"}, False),
        ("tall", {"tallisport"}, False),  # a common word is not a name cut short
        ("pine", {"pineapple"}, False),
    ],
)
def test_word_matching_forgives_typing_not_other_words(word: str, vocab: set, hit: bool) -> None:
    assert matches(word, vocab) is hit


def test_vocab_core_is_the_words_most_questions_use() -> None:
    counts, n = word_counts(["Who built the old market?", "Who constructed the old market?", "When was it built?"])
    v = Vocab.from_counts(counts, n)
    assert n == 3 and v.core == {"who", "built", "old", "market"} and "construct" in v.words


def test_routing_dict_round_trips_through_json(encoder) -> None:
    questions = SKILLS["orvanis_moons"][0]
    d = json.loads(json.dumps(build_routing(questions, encoder)))
    assert d["encoder"] == "all-MiniLM-L6-v2" and d["dim"] == EMBED_DIM and d["count"] == len(questions)
    assert d["dtype"] == "float16" and d["words"]["orvanis"] == len(questions) and d["n_questions"] == len(questions)
    keys = decode_routing_key(d)
    assert keys.shape == (len(questions), EMBED_DIM) and keys.dtype == torch.float32
    torch.testing.assert_close(keys, routing_key_from_questions(questions, encoder), atol=2e-3, rtol=0)
    assert "orvanis" in decode_routing_vocab(d).core
    assert decode_routing_vocab({k: v for k, v in d.items() if k not in ("words", "n_questions")}).words == set()
    legacy = {k: v for k, v in d.items() if k not in ("words", "n_questions")} | {"terms": {"Orvanis": 10}}
    assert decode_routing_vocab(legacy).core == {"orvanis"}  # cards from before words: their terms


def test_routing_key_dedups_and_keeps_the_most_varied_rows(encoder) -> None:
    questions = [f"How many moons does planet number {i} have?" for i in range(30)] + ["Who painted it?"] * 3
    keys = routing_key_from_questions(questions, encoder, max_rows=8)
    assert keys.shape == (8, EMBED_DIM)
    odd_one = encoder.encode(["Who painted it?"])[0]
    assert float((keys @ odd_one).max()) > 0.999  # farthest-point sampling keeps the outlier
    with pytest.raises(RoutingKeyError, match="at least one"):
        routing_key_from_questions(["", "  "], encoder)


def _good() -> dict:
    return encode_routing_key(torch.nn.functional.normalize(torch.randn(3, EMBED_DIM), dim=1), {"x": 2}, 3)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda d: d.pop("data_b64"), "lacks \\['data_b64'\\]"),
        (lambda d: d.update(encoder="bge-small"), "encoder 'bge-small'"),
        (lambda d: d.update(dim=768), "dim 768"),
        (lambda d: d.update(count=4), "needs"),
        (lambda d: d.update(count="3"), "must be an int"),
        (lambda d: d.update(count=0), "must be an int"),
        (lambda d: d.update(dtype="int8"), "dtype 'int8'"),
        (lambda d: d.update(data_b64="not base64!!"), "not valid base64"),
        (lambda d: d.update(data_b64=base64.b64encode(b"\x00" * 3 * EMBED_DIM * 2).decode()), "all-zero"),
        (lambda d: d.update(data_b64=base64.b64encode(b"\xff" * 3 * EMBED_DIM * 2).decode()), "NaN"),
    ],
)
def test_bad_routing_dicts_are_refused_clearly(mutate, error: str) -> None:
    d = _good()
    mutate(d)
    with pytest.raises(RoutingKeyError, match=error):
        decode_routing_key(d)


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("not a dict", "must be a dict"),
        (torch.zeros(2, 10), "got shape"),
    ],
)
def test_bad_keys_given_to_the_router(encoder, value, error: str) -> None:
    with pytest.raises(RoutingKeyError, match=error):
        decode_routing_key(value) if isinstance(value, str) else LoRARouter(encoder=encoder).add_skill(
            "s", value
        )


@pytest.mark.parametrize(
    "routing",
    [{"words": {"x": -1}}, {"words": ["x"]}, {"words": {"x": True}}, {"words": {"x": 1}, "n_questions": 0}],
)
def test_bad_words_are_refused(routing) -> None:
    with pytest.raises(RoutingKeyError, match="positive"):
        decode_routing_vocab(routing)


def test_router_config_lists_every_problem() -> None:
    with pytest.raises(ConfigError) as info:
        RouterConfig(threshold=1.5, weights=(1.0,), top_k=0)
    for needle in ("router.threshold=1.5", "router.weights needs 5", "router.top_k=0", "conf/router"):
        assert needle in str(info.value)
    with pytest.raises(ConfigError, match="router.treshold is not a setting"):
        RouterConfig.from_mapping({"treshold": 0.3})
    with pytest.raises(ConfigError, match="router.threshold='abc' should be float"):
        RouterConfig.from_mapping({"threshold": "abc"})
    with pytest.raises(ConfigError, match="threshold"):
        DissonanceDetector([], threshold=0)


def test_routing_while_skills_change_in_another_thread(encoder, real_cards) -> None:
    router = make_router(encoder, real_cards)
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            for _ in range(15):
                assert router.route("Who was the first mayor of Brindlemark?").selected == "brindlemark_mayor"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def learn() -> None:
        try:
            for i in range(15):
                router.add_skill(f"new_{i}", real_cards["hexmoor_rules"])
                router.remove_skill(f"new_{i}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=serve), threading.Thread(target=serve), threading.Thread(target=learn)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and router.skills == list(real_cards)
