"""Integration tests wait for what they need from the API server, never assume it took effect at once:
a new RoleBinding reaches the RBAC authorizer a moment after it is stored (seconds on a loaded
machine). Here the authorizer's lag is played by a fake call refused a few times."""

from __future__ import annotations

import pytest
from kubernetes.client import ApiException

from tests.infra.kube import permitted
from tests.infra.proc import wait_for

pytestmark = pytest.mark.unit


class LateBinding:
    """A list call the server refuses (403) until its authorizer has caught up with a new binding."""

    def __init__(self, refusals: int, status: int = 403):
        self.refusals, self.status, self.calls = refusals, status, 0

    def __call__(self) -> list[str]:
        self.calls += 1
        if self.calls <= self.refusals:
            raise ApiException(status=self.status, reason="Forbidden" if self.status == 403 else "Unauthorized")
        return ["settings"]


def test_a_call_refused_until_the_binding_takes_effect_is_waited_for():
    late = LateBinding(refusals=3)
    with pytest.raises(ApiException):  # what the test did before: one call, right after the binding
        late()
    wait_for(lambda: permitted(late), timeout=30, interval=0.001, what="the RoleBinding in effect")
    assert late.calls == 4 and late() == ["settings"]


def test_another_error_is_not_a_refusal_and_is_named_when_time_runs_out():
    unauthorized = LateBinding(refusals=10**9, status=401)
    with pytest.raises(ApiException):
        permitted(unauthorized)
    with pytest.raises(TimeoutError, match=r"the RoleBinding in effect was not ready after 0 s \(last error: "
                                           r"ApiException: \(401\)"):
        wait_for(lambda: permitted(unauthorized), timeout=0.01, interval=0.001, what="the RoleBinding in effect")
