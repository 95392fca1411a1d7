"""The case helper ``_cases`` follows the registries: a newly registered SDE, method or option is
either picked up or named here as needing cases."""

import pytest

import _cases
from sde_diffusion.sde import SDES, VPSDE
from solvers import METHODS, available


def test_sdes_are_the_registry():
    assert list(_cases.SDE_NAMES) == list(SDES)
    assert [type(s) for s in _cases.sdes()] == list(SDES.values())


def test_methods_are_the_registry():
    assert _cases.methods() == available() == list(METHODS)
    assert set(_cases.deterministic()) | set(_cases.stochastic()) == set(METHODS)


def test_every_option_has_values():
    """An option that is not a ``choice`` needs values in ``_cases.VALUES`` (or an ``UNUSABLE`` entry)."""
    assert not _cases.missing_values(), "these (method, option) pairs need cases in tests/_cases.py"


def test_the_tables_name_only_registered_methods_and_options():
    for method, option in _cases.VALUES:
        assert option in METHODS[method].options, (method, option)
    for method, option, value in _cases.UNUSABLE:
        assert value in _cases.choices(METHODS[method].options[option]), (method, option, value)
    for method, combos in _cases.COMBOS.items():
        assert all(set(c) <= set(METHODS[method].options) for c in combos), method


@pytest.mark.parametrize("method", list(METHODS))
def test_every_variant_binds_on_vp_and_changes_something(method):
    """Each variant is a valid call (binds on VP) and distinct from the defaults and the others."""
    variants = _cases.variants(method)
    assert variants[0] == {}
    for opts in variants:
        assert _cases.bindable_on_vp(method, opts), opts
    ids = [_cases.option_id(o) for o in variants]
    assert len(ids) == len(set(ids)), ids
    bound = [(METHODS[method].bind(VPSDE(), 10, _cases.method_options(o)), set(o) - set(_cases.method_options(o)))
             for o in variants]
    assert all(b != bound[0] for b in bound[1:])
    # every option of the method is varied by some variant
    assert {k for o in variants for k in o} == set(METHODS[method].options)


def test_every_choice_value_is_a_variant():
    for name, spec in METHODS.items():
        variants = _cases.variants(name)
        for option, opt in spec.options.items():
            for value in _cases.choices(opt) or ():
                if (name, option, value) not in _cases.UNUSABLE:
                    assert any(o.get(option, opt.default) == value for o in variants), (name, option, value)
