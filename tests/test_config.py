"""``config.to_dataclass`` / ``check_sections``: the one validator every config section goes through."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import OmegaConf

from autodidact.config import check_sections, to_dataclass
from autodidact.errors import ConfigError


@dataclass
class Inner:
    n: int = 1
    """A whole number."""

    def problems(self) -> list[str]:
        return [] if self.n >= 0 else [f"outer.inner.n={self.n} must be >= 0"]


@dataclass
class Outer:
    rate: float = 0.5
    names: list[str] = field(default_factory=lambda: ["a"])
    weights: tuple[float, ...] = (1.0, 2.0)
    limit: int | None = None
    flag: bool = False
    inner: Inner = field(default_factory=lambda: Inner(n=7))
    where: str = "."

    def problems(self) -> list[str]:
        return [] if self.rate <= 1 else [f"outer.rate={self.rate} must be <= 1"]


@pytest.mark.parametrize(("node", "needle"), [
    ({"rate": "high"}, "outer.rate='high' should be float"),
    ({"rate": True}, "outer.rate=True should be float"),  # a bool is not a number here
    ({"names": [1, 2]}, "outer.names=[1, 2] should be list[str]"),
    ({"weights": [1, "x"]}, "outer.weights=[1, 'x'] should be tuple[float, ...]"),
    ({"limit": 2.5}, "outer.limit=2.5 should be int or null"),
    ({"flag": "yes"}, "outer.flag='yes' should be bool"),
    ({"inner": {"n": "many"}}, "outer.inner.n='many' should be int"),
    ({"inner": {"m": 1}}, "outer.inner.m is not a setting (known: n)"),
    ({"inner": 3}, "outer.inner=3 should be a section of settings"),
    ({"where": "???"}, "outer.where must be set (outer.where=...)"),
    ({"rate": 2}, "outer.rate=2.0 must be <= 1"),
    ({"inner": {"n": -1}}, "outer.inner.n=-1 must be >= 0"),  # a nested section's own check
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_kind_of_mistake_names_its_setting(node, needle):
    with pytest.raises(ConfigError) as info:
        to_dataclass(Outer, node, "outer")
    assert str(info.value).startswith("invalid outer config:\n  - ")
    assert needle in str(info.value), str(info.value)
    assert info.value.problems == [line[4:] for line in str(info.value).splitlines()[1:-1]]


def test_values_are_coerced_and_a_partial_nested_section_keeps_its_defaults():
    out = to_dataclass(Outer, {"rate": 1, "names": "x, y", "weights": [3, 4], "inner": {}, "_target_": "ignored"},
                       "outer")
    assert out.rate == 1.0 and isinstance(out.rate, float)
    assert out.names == ["x", "y"] and out.weights == (3.0, 4.0)
    assert out.inner == Inner(n=7)  # the field's own default, not Inner()'s


def test_type_errors_and_range_errors_are_reported_together():
    with pytest.raises(ConfigError) as info:
        to_dataclass(Outer, {"flag": "yes", "rate": 3}, "outer")
    assert info.value.problems == ["outer.flag='yes' should be bool", "outer.rate=3.0 must be <= 1"]


def test_an_interpolation_that_cannot_resolve_here_is_kept_as_text():
    node = OmegaConf.create({"rate": 0.2, "where": "${hydra:runtime.output_dir}"})
    assert to_dataclass(Outer, node, "outer").where == "${hydra:runtime.output_dir}"


def test_every_section_and_the_top_level_in_one_error():
    @dataclass
    class Top:
        seed: int = 0

    cfg = OmegaConf.create({"seed": "x", "typo": 1, "outer": {"rate": 9}, "other": {"anything": 1}})
    with pytest.raises(ConfigError) as info:
        check_sections(cfg, {"outer": Outer}, top=Top, passthrough=("other",), top_file="conf/mine.yaml")
    msg = str(info.value)
    assert msg.startswith("invalid config:\n")
    assert info.value.problems == ["seed='x' should be int", "typo is not a setting (known: seed, other, outer)",
                                   "outer.rate=9.0 must be <= 1"]
    assert msg.endswith("or in conf/mine.yaml.")  # 'outer' is no Hydra group here: its keys live in the file
    ok = check_sections(OmegaConf.create({"seed": 3, "outer": {}}), {"outer": Outer}, top=Top)
    assert ok[""].seed == 3 and ok["outer"] == Outer()
