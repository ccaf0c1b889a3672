import samekey


def test_all_is_sorted_and_exported() -> None:
    assert samekey.__all__ == sorted(samekey.__all__)
    for name in samekey.__all__:
        assert hasattr(samekey, name), name


def test_errors_share_one_root() -> None:
    for name in ("RetriesExhausted", "OperationMismatch", "OperationInProgress", "KeyExpired", "JournalError"):
        assert issubclass(getattr(samekey, name), samekey.SameKeyError)


def test_clients_are_httpx_drop_ins() -> None:
    import httpx

    assert issubclass(samekey.Client, httpx.Client)
    assert issubclass(samekey.AsyncClient, httpx.AsyncClient)


def test_a_third_store_builds_its_claim_result_from_the_public_api() -> None:
    # README "Writing another store": claim(...) -> ClaimResult; a Redis or DynamoDB store
    # must be able to make one without importing samekey's private modules
    # (and type its methods: claim receives an Intent)
    from samekey._journal import ClaimResult, Intent

    assert {"ClaimResult", "Intent"} <= set(samekey.__all__)
    assert samekey.ClaimResult is ClaimResult and samekey.Intent is Intent
