"""Token caches of raw training data go to a temporary directory, never to the user's ~/.cache."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _token_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ALPHASPEC_CACHE", str(tmp_path_factory.mktemp("token-cache")))
    yield
    mp.undo()
