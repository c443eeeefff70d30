"""Caches go to a temporary directory, never to the user's ~/.cache: the token caches of raw training data, and
the eigenvalue store, which is also off unless a test turns it on (tests/test_store.py): a test that injects a
failed solve must see the solve, not an entry an earlier test left."""

import pytest


@pytest.fixture(autouse=True, scope="session")
def _caches(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("ALPHASPEC_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("ALPHASPEC_NO_CACHE", "1")
    yield
    mp.undo()
