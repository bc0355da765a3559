import os

import pytest

from netsim.fabric.namespaces import list_namespaces, missing_capabilities

NEEDS_NETNS = pytest.mark.skipif(missing_capabilities() is not None,
                                 reason=f"network namespaces unavailable: {missing_capabilities()}")

#: Namespace-name prefix and address block of this test process, so that concurrent test runs on one
#: machine (developers share it) never touch each other's namespaces, devices or routes.
PREFIX = f"f{os.getpid() % 10000}"
NET = 64 + (os.getpid() % 90) * 2


@pytest.fixture
def clean_namespaces():
    """Fail the test if it leaves any network namespace of this process behind."""
    yield
    left = [n for n in list_namespaces() if n.startswith(PREFIX)]
    assert not left, f"namespaces left behind: {sorted(left)}"
