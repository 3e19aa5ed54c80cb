import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=60, deadline=None)
# Nightly or before a release: five times CI's examples, for every property (those that
# run fewer than the profile's in CI too: ``helpers.scaled``).
settings.register_profile(
    "long", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Every socket test runs on both backends."""
    return str(request.param)


# Real servers, started per test on free loopback ports (see servers.py).
# Headless Chromium for the page and the JavaScript client (see browser_helpers.py).
from .browser_helpers import browser, second_browser  # noqa: E402, F401
from .servers import nats_server, plain_nats_server, redis_server  # noqa: E402, F401
