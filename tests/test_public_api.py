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
