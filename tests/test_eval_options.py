"""Benchmark method options: ``[METHOD:]KEY=VALUE`` parsing and typed options per method."""

from __future__ import annotations

import pytest

from promptmoe_plugin.eval.methods import (
    ClickOptions,
    RefineOptions,
    click_methods,
    refine_methods,
)
from promptmoe_plugin.eval.options import (
    click_options,
    method_strings,
    parse_options,
    recorded,
    refine_options,
)
from promptmoe_plugin.refine import RefineConfig
from promptmoe_plugin.smartsam import SmartSamConfig


def test_parse_by_target_and_merge_per_method():
    pairs = ["k=3", "smartsam-ref:intent=dinov2", "flag=false", "path=a:b", "full:box_gate=None"]
    opts = parse_options([*pairs, "full:dinov2_model=/m:1", "k=4"])
    assert opts == {
        "*": {"k": "4", "flag": "false", "path": "a:b"},
        "smartsam-ref": {"intent": "dinov2"},
        "full": {"box_gate": "None", "dinov2_model": "/m:1"},
    }
    assert method_strings(opts, "smartsam-ref")["intent"] == "dinov2"
    assert "intent" not in method_strings(opts, "sam")
    assert method_strings({"*": {"k": "1"}, "full": {"k": "5"}}, "full") == {"k": "5"}
    # The run's config records the options as before: numbers, booleans and none converted.
    assert recorded(parse_options(pairs)) == {
        "*": {"k": 3, "flag": False, "path": "a:b"},
        "smartsam-ref": {"intent": "dinov2"},
        "full": {"box_gate": None},
    }
    assert recorded({"*": {"lam": "0.1", "x": "True", "y": ""}}) == {
        "*": {"lam": 0.1, "x": True, "y": ""}
    }


@pytest.mark.parametrize("bad", ["novalue", "=3", "full:=3", "full:"])
def test_malformed_option_is_a_clear_error(bad):
    with pytest.raises(ValueError, match=r"\[METHOD:\]KEY=VALUE"):
        parse_options([bad])


def test_refine_options_are_typed_per_method():
    methods = refine_methods(["full", "samrefiner"])
    opts = parse_options(
        ["k=5", "full:box_gate=none", "full:experts=edge,color", "samrefiner:router=w.pt"]
    )
    typed = refine_options(opts, methods)
    assert typed["full"] == RefineOptions(
        RefineConfig(k=5, box_gate=None, experts=("edge", "color"))
    )
    assert typed["samrefiner"] == RefineOptions(RefineConfig(k=5), router="w.pt")
    assert refine_options({}, methods)["full"] == RefineOptions()


def test_refine_option_bad_key_or_value_names_the_method():
    methods = refine_methods(["full", "lite"])
    with pytest.raises(ValueError, match="method 'lite'.*nope"):
        refine_options(parse_options(["lite:nope=1"]), methods)
    with pytest.raises(ValueError, match="method 'full'.*box_gate"):
        refine_options(parse_options(["box_gate=2"]), methods)


def test_click_options_are_typed_per_method():
    methods = click_methods(["smartsam-pure", "smartsam-ref"])
    opts = parse_options(
        ["n_chains=5", "smartsam-ref:intent=dinov2", "smartsam-ref:dinov2_model=m"]
    )
    typed = click_options(opts, methods)
    assert typed["smartsam-pure"] == ClickOptions(SmartSamConfig(n_chains=5))
    assert typed["smartsam-ref"] == ClickOptions(SmartSamConfig(n_chains=5), "dinov2", "m")
    # "none" is an intent (pure mode), not "keep the method's".
    pure = ClickOptions.from_strings({"intent": "none", "dinov2_model": "none"})
    assert pure == ClickOptions(intent="none")


def test_click_option_errors_name_the_method():
    with pytest.raises(ValueError, match="method 'smartsam-ref'.*nope"):
        click_options(parse_options(["smartsam-ref:nope=1"]), click_methods(["smartsam-ref"]))
    with pytest.raises(ValueError, match="method 'smartsam-pure'.*reduce"):
        click_options(parse_options(["reduce=median"]), click_methods(["smartsam-pure"]))
    # Plain SAM takes no options, also none meant for every method.
    with pytest.raises(ValueError, match="'sam' takes no options.*n_chains"):
        click_options(parse_options(["n_chains=5"]), click_methods(["smartsam-pure", "sam"]))


def test_unknown_method_names():
    with pytest.raises(ValueError, match="unknown click method 'nope'.*sam-single"):
        click_methods(["sam", "nope"])
    with pytest.raises(ValueError, match="unknown refine method 'nope'.*samrefiner"):
        refine_methods(["nope"])
    assert [m.name for m in refine_methods(["unrefined", "full"])] == ["unrefined", "full"]
