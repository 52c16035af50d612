"""Recall request validation (serving.servicer.request_problem): what INVALID_ARGUMENT says, for any input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from serving.arms import Arms
from serving.servicer import MAX_REQUEST_ID, MAX_USER_ID, request_problem
from xdm.v1 import recall_pb2

ARMS = Arms.parse("xdm:50,sdm:50")
MAX_K = 500
text = st.text(st.characters(blacklist_categories=["Cs"]))


@settings(max_examples=200, deadline=None)
@given(user_id=text.filter(lambda u: 0 < len(u) <= MAX_USER_ID),
       request_id=st.one_of(text, st.integers(MAX_REQUEST_ID - 2, 4 * MAX_REQUEST_ID).map(lambda n: "r" * n)),
       k=st.integers(1, MAX_K), arm=st.sampled_from(["", *ARMS.names]))
def test_a_request_id_is_accepted_exactly_up_to_its_cap(user_id, request_id, k, arm):
    request = recall_pb2.RecallRequest(user_id=user_id, request_id=request_id, k=k, arm=arm)
    problem = request_problem(request, ARMS, MAX_K)
    if len(request_id) <= MAX_REQUEST_ID:
        assert problem == ""
    else:
        assert problem.startswith(f"request_id is longer than {MAX_REQUEST_ID} characters")


@settings(max_examples=200, deadline=None)
@given(user_id=text, request_id=text.filter(lambda r: len(r) <= MAX_REQUEST_ID), k=st.integers(-10, 2 * MAX_K),
       arm=st.one_of(st.sampled_from(["", *ARMS.names]), text))
def test_every_problem_is_named_and_a_clean_request_has_none(user_id, request_id, k, arm):
    request = recall_pb2.RecallRequest(user_id=user_id, request_id=request_id, k=k, arm=arm)
    problem = request_problem(request, ARMS, MAX_K)
    valid = 0 < len(user_id) <= MAX_USER_ID and 1 <= k <= MAX_K and arm in ("", *ARMS.names)
    assert (problem == "") == valid
    if not valid:
        assert any(field in problem for field in ("user_id", "k must be", "arm"))


def test_the_cap_fits_the_ids_callers_use():
    assert MAX_REQUEST_ID >= len("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")  # a W3C traceparent
