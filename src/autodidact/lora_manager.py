"""LoRAManager: the installed skills, hot-loaded into one shared base model.

* ``scan()`` at start and ``poll()`` later install every valid ``*.lora.arrow`` in ``skills_dir``;
  an invalid card is refused with a logged reason (once per file version) and serving goes on.
* A card is fully read and checked *before* anything is touched, so re-learning a skill swaps the
  old adapter for the new one under the lock in one step: a query sees the old version or the new,
  never neither.
* Adapters live in the base model's ``LoRALinear`` layers keyed by skill name; activating one is a
  pointer switch (``set_adapter``), never a copy of base weights. At most ``max_loaded`` adapters are
  attached at once; the least recently used is detached and re-read from its card on next use.
* One re-entrant lock serialises everything that touches the model (generation, training, swaps),
  so a watcher thread can install cards while the serving thread answers.
* What the base model already knows needs no adapter: ``remember_base`` keeps such questions in
  ``skills_dir/base_knowledge.json`` and routes them to ``BASE_SKILL``, answered with no adapter.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from autodidact.card import SUFFIX, Card, CardError, attach_card, check_card_fits, read_card
from autodidact.errors import ConfigError
from autodidact.fileio import atomic_write_text
from autodidact.inference.answer import Answer, answer_with_confidence, draft_pool
from autodidact.inference.generate import generate_answer
from autodidact.inference.lora_layer import delete_adapter, set_adapter
from autodidact.models import ModelBundle

log = logging.getLogger(__name__)

BASE_SKILL = "<base>"
"""Routing name of "the base model already knows this": answered with no adapter."""
BASE_FILE = "base_knowledge.json"


@dataclass
class InstalledSkill:
    """A card the manager has accepted."""

    name: str
    path: Path
    meta: dict
    signature: tuple[int, int]
    """(mtime_ns, size) of the file when installed: a change means a new version."""


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_mtime_ns, st.st_size)


class LoRAManager:
    """Installs, hot-swaps, evicts and activates skill adapters on a shared base model."""

    def __init__(self, bundle: ModelBundle, skills_dir: str | Path, router=None, max_loaded: int = 8) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be >= 1")
        self.bundle = bundle
        self.skills_dir = Path(skills_dir)
        try:
            self.skills_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot use skills_dir={self.skills_dir} ({e.strerror}); "
                              "set skills_dir=DIR to a writable folder") from None
        self.router = router
        self.max_loaded = max_loaded
        self.lock = threading.RLock()
        self.skills: dict[str, InstalledSkill] = {}
        self.refused: dict[Path, tuple[tuple[int, int], str]] = {}
        self._attached: OrderedDict[str, None] = OrderedDict()  # LRU order, most recent last
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._base_sig: tuple[int, int] | None = None

    @property
    def model(self) -> nn.Module:
        return self.bundle.model

    @property
    def attached(self) -> list[str]:
        return list(self._attached)

    # -- install / unload ----------------------------------------------------------------------
    def install(self, path: str | Path, card: Card | None = None) -> InstalledSkill:
        """Validate ``path`` and make its skill available (replacing an older version atomically).

        ``card``: the file's decoded content, when the caller has it in memory already (the factory
        just wrote and verified it); the file is then not read again.
        """
        path = Path(path)
        sig = _signature(path)
        if card is None:
            card = read_card(path)  # every check runs before any state changes
        check_card_fits(card, self.model, self.bundle.fingerprint)
        routing = card.meta.get("routing")
        with self.lock:
            name = card.skill
            old = self.skills.get(name)
            if old is not None and old.path != path and old.path.exists():
                # Two files claiming one skill would replace each other on every scan.
                raise CardError(path, f"holds skill {name!r}, which is already installed from {old.path}; "
                                      "remove one of the two files")
            if self.router is not None and routing is not None:
                self.router.add_skill(name, routing)  # validates the routing key; replaces the old one
            self._detach(name)
            self._attach(card, name, checked=True)  # check_card_fits ran above, on this model
            self.skills[name] = InstalledSkill(name=name, path=path, meta=card.meta, signature=sig)
            self.refused.pop(path, None)
        if routing is None:
            log.warning("card %s has no routing key: skill %r can be used by name but is never routed to", path, name)
        log.info("%s skill %r from %s", "replaced" if old else "installed", name, path)
        return self.skills[name]

    def unload(self, name: str) -> None:
        with self.lock:
            self._detach(name)
            self.skills.pop(name, None)
            if self.router is not None and name in self.router.skills:
                self.router.remove_skill(name)

    def scan(self) -> dict[str, list]:
        """Install new or changed cards, unload vanished ones. Returns what changed."""
        installed, refused, removed = [], [], []
        seen: set[Path] = set()
        for path in sorted(self.skills_dir.glob(f"*{SUFFIX}")):
            seen.add(path)
            try:
                sig = _signature(path)
            except OSError:
                continue
            current = next((s for s in self.skills.values() if s.path == path), None)
            if current is not None and current.signature == sig:
                continue
            if path in self.refused and self.refused[path][0] == sig:
                continue
            try:
                installed.append(self.install(path).name)
            except CardError as e:
                self.refused[path] = (sig, e.problem)
                refused.append((str(path), e.problem))
                log.warning("refused %s", e)
            except Exception as e:  # a routing-key or other error in one card must not stop serving
                self.refused[path] = (sig, str(e))
                refused.append((str(path), str(e)))
                log.warning("refused skill card %s: %s", path, e)
        with self.lock:
            for name, s in list(self.skills.items()):
                if s.path not in seen and s.path.parent == self.skills_dir:
                    self.unload(name)
                    removed.append(name)
        self._load_base()
        return {"installed": installed, "refused": refused, "removed": removed}

    poll = scan

    # -- what the base model knows ---------------------------------------------------------------
    def _load_base(self) -> None:
        path = self.skills_dir / BASE_FILE
        if self.router is None or not path.exists():
            return
        try:
            sig = _signature(path)
            if sig == self._base_sig:
                return
            data = json.loads(path.read_text("utf-8"))
            self.router.add_skill(BASE_SKILL, data["routing"])
            self._base_sig = sig
        except Exception as e:  # a damaged file must not stop serving: the questions just route as unknown
            if self.refused.get(path, (None,))[0] != _signature(path):
                log.warning("ignored %s (%s); delete it to start over", path, e)
                self.refused[path] = (_signature(path), str(e))

    def remember_base(self, questions: list[str]) -> None:
        """Route ``questions`` (and their kind) to the base model from now on, in every process."""
        from autodidact.inference.lora_router import build_routing

        path = self.skills_dir / BASE_FILE
        with open(self.skills_dir / ".base_knowledge.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two processes adding at once must not drop each other's
            known: list[str] = []
            if path.exists():
                try:
                    known = list(json.loads(path.read_text("utf-8")).get("questions", []))
                except (ValueError, OSError, AttributeError) as e:
                    log.warning("rewriting damaged %s (%s)", path, e)
            known = list(dict.fromkeys([*known, *(q.strip() for q in questions if q.strip())]))
            encoder = self.router.encoder if self.router is not None else None
            if encoder is None:
                return
            routing = build_routing(known, encoder)
            atomic_write_text(path, json.dumps({"questions": known, "routing": routing}, ensure_ascii=False))
        self.router.add_skill(BASE_SKILL, routing)
        self._base_sig = _signature(path)

    # -- watcher -------------------------------------------------------------------------------
    def start_watching(self, interval_s: float = 1.0) -> None:
        """Poll ``skills_dir`` in a daemon thread so cards dropped in while serving are picked up."""
        if self._watcher is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.scan()
                except Exception:  # keep watching whatever one scan hit
                    log.exception("skill scan failed")

        self._watcher = threading.Thread(target=loop, name="autodidact-skill-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=10)
            self._watcher = None

    # -- adapters in the model -----------------------------------------------------------------
    def _attach(self, card: Card, name: str, checked: bool = False) -> None:
        attach_card(card, self.model, self.bundle.fingerprint, adapter_name=name, checked=checked)
        self._attached[name] = None
        self._attached.move_to_end(name)
        while len(self._attached) > self.max_loaded:
            victim = next(iter(self._attached))
            self._detach(victim)

    def _detach(self, name: str) -> None:
        if name in self._attached:
            delete_adapter(self.model, name)
            del self._attached[name]

    def _ensure_attached(self, name: str) -> None:
        if name in self._attached:
            self._attached.move_to_end(name)
            return
        skill = self.skills.get(name)
        if skill is None:
            raise KeyError(f"no installed skill {name!r}")
        self._attach(read_card(skill.path), name)

    def _usable(self, name: str) -> bool:
        """Attach ``name`` if it can be; a skill removed (or whose card vanished) since the query was
        routed is unloaded, as the next scan would, and the base model answers instead."""
        if name not in self.skills:
            log.info("skill %r was removed after routing; answering with the base model", name)
            return False
        try:
            self._ensure_attached(name)
            return True
        except (CardError, OSError) as e:
            log.warning("skill %r cannot be re-read (%s); unloading it, the base model answers", name, e)
            self.unload(name)
            return False

    @contextlib.contextmanager
    def use(self, name: str | None) -> Iterator[nn.Module]:
        """Hold the model with adapter ``name`` (or none; ``BASE_SKILL`` is none too) active."""
        if name == BASE_SKILL:
            name = None
        with self.lock:
            if name is not None and not self._usable(name):
                name = None
            set_adapter(self.model, name)
            try:
                yield self.model
            finally:
                set_adapter(self.model, None)

    def attach_for_batch(self, names: list[str | None]) -> list[str | None]:
        """Attach every adapter a batch needs at once (call under ``lock``); returns the adapter per row.

        ``BASE_SKILL`` and skills removed since routing become None (the base model answers them, as
        ``use`` does). More distinct skills than ``max_loaded`` would evict each other mid-batch: refused.
        """
        distinct = {n for n in names if n not in (None, BASE_SKILL)}
        if len(distinct) > self.max_loaded:
            raise ValueError(f"a batch needs {len(distinct)} adapters but at most {self.max_loaded} fit at once")
        usable = {n for n in distinct if self._usable(n)}
        return [n if n in usable else None for n in names]

    def generate(self, name: str | None, question: str, max_new_tokens: int = 48) -> str:
        with self.use(name) as model:
            return generate_answer(model, self.bundle.tokenizer, question, max_new_tokens=max_new_tokens)

    def answer(self, name: str | None, question: str, max_new_tokens: int = 48) -> Answer:
        """The greedy answer with adapter ``name`` and how sure the model was of each token.

        The skill's taught answers are the drafts (``inference/answer.py``): a skill answering what it
        learned is checked in a forward pass or two instead of a decode step per token; the answer is
        the same greedy answer either way."""
        pool = self.taught_answers(name)
        with self.use(name) as model:
            return answer_with_confidence(model, self.bundle.tokenizer, question, max_new_tokens=max_new_tokens,
                                          pool=pool)

    def taught_answers(self, name: str | None) -> list[str]:
        """The answers skill ``name``'s card says it was trained to give: its facts' answers, then its
        training pairs' answers, most common first (none for the base model or an unknown name)."""
        skill = self.skills.get(name) if name not in (None, BASE_SKILL) else None
        if skill is None:
            return []
        meta = skill.meta
        facts = [f.get("answer") for f in meta.get("facts") or [] if isinstance(f, dict)]
        pairs = draft_pool(p.get("answer") for p in meta.get("pairs") or [] if isinstance(p, dict))
        answers = [meta.get("reference_answer"), *facts, *pairs]
        return list(dict.fromkeys(a for a in answers if isinstance(a, str) and a.strip()))
