from libs.runtime.caches import BytesBoundedCache


def test_the_cache_stays_within_its_byte_budget_and_keeps_the_most_recent():
    cache: BytesBoundedCache[str, str] = BytesBoundedCache(max_bytes=20_000, max_entry_bytes=2_000)
    for number in range(1_000):
        cache.get(f"name {number:04d} " * 20, str.upper)
    assert 0 < cache.bytes <= 20_000
    assert len(cache) < 1_000
    calls: list[str] = []
    last = "name 0999 " * 20

    def record(key: str) -> str:
        calls.append(key)
        return key

    assert cache.get(last, record) == last.upper()
    assert calls == []  # the newest entry was kept


def test_an_entry_larger_than_allowed_is_computed_and_never_kept():
    cache: BytesBoundedCache[str, int] = BytesBoundedCache(max_bytes=1_000_000, max_entry_bytes=2_000)
    huge = "x" * 1_000_000
    assert cache.get(huge, len) == 1_000_000
    assert len(cache) == 0
    assert cache.bytes == 0
