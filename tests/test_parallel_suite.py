"""scripts/test runs the suite on two xdist workers and relies on xdist_group to keep the tests that read
a budget's clock one at a time."""
from __future__ import annotations

import pytest


@pytest.mark.xdist_group("deadline")
def test_a_grouped_test_is_scheduled_as_part_of_its_group(request: pytest.FixtureRequest):
    # pytest-xdist marks a group by appending "@name" to the node id; where it cannot (pytest 9.2 with
    # xdist 3.8) the mark is silently ignored and the group's tests spread over both workers.
    if not request.config.getoption("loadgroup", False):
        pytest.skip("the suite runs without --dist loadgroup")
    assert request.node.nodeid.endswith("@deadline"), request.node.nodeid
