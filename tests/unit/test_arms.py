import pytest
from hypothesis import given, strategies as st

from serving.arms import ArmError, Arms


def test_parse_normalises_shares():
    arms = Arms.parse("xdm:50, sdm:50")
    assert arms.names == ("xdm", "sdm") and arms.shares == (0.5, 0.5)


@pytest.mark.parametrize("spec", ["", "xdm:", "xdm:0", "xdm:-1", "xdm:abc", "xdm:1,xdm:2", ":3"])
def test_bad_specs_raise(spec):
    with pytest.raises(ArmError):
        Arms.parse(spec)


def test_assignment_is_sticky_and_follows_shares():
    arms = Arms.parse("a:80,b:20")
    users = [f"u{i}" for i in range(20000)]
    first = [arms.assign(u) for u in users]
    assert first == [arms.assign(u) for u in users]
    share_a = first.count("a") / len(first)
    assert 0.78 < share_a < 0.82


@given(st.text(min_size=1, max_size=40))
def test_any_user_gets_a_configured_arm(user):
    arms = Arms.parse("x:1,y:2,z:3")
    assert arms.assign(user) in arms.names


def test_an_arm_can_be_served_by_another_arms_model():
    arms = Arms.parse("xdm:50,twin=xdm:25,sdm:25")
    assert arms.names == ("xdm", "twin", "sdm")
    assert arms.model_for("twin") == "xdm" and arms.model_for("sdm") == "sdm"
    assert arms.learners == ("xdm", "sdm")
