"""Token values and the token stores: masking, the file format, atomic 0600 writes, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rdfunnel.errors import RDStationError
from rdfunnel.tokens import FileTokenStore, MemoryTokenStore, Token, TokenStore, TokenStoreError

NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
ACCESS = "eyJhbGciOiJIUzI1NiJ9.secret-access"
REFRESH = "refresh-secret-0123456789"


def token(**changes: object) -> Token:
    fields: dict[str, object] = {
        "access_token": ACCESS,
        "refresh_token": REFRESH,
        "expires_at": NOW + timedelta(days=1),
    }
    fields.update(changes)
    return Token(**fields)  # type: ignore[arg-type]


class TestToken:
    def test_from_response_computes_an_absolute_utc_expiry(self) -> None:
        payload = {"access_token": ACCESS, "expires_in": 86400, "refresh_token": REFRESH}
        got = Token.from_response(payload, now=NOW)
        assert got == Token(
            access_token=ACCESS, refresh_token=REFRESH, expires_at=NOW + timedelta(days=1)
        )
        assert got.expires_at is not None
        assert got.expires_at.tzinfo is UTC

    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            ({"expires_in": "7200"}, NOW + timedelta(hours=2)),
            ({"expires_at": NOW.timestamp() + 60}, NOW + timedelta(seconds=60)),
            ({}, None),
            ({"expires_in": None}, None),
            ({"expires_in": "soon"}, None),
            ({"expires_in": True}, None),
        ],
    )
    def test_from_response_expiry_variants(
        self, payload: dict[str, object], expected: datetime | None
    ) -> None:
        got = Token.from_response({"access_token": ACCESS, **payload}, now=NOW)
        assert got.expires_at == expected
        assert got.refresh_token is None

    @pytest.mark.parametrize("payload", [{}, {"access_token": ""}, {"access_token": 42}])
    def test_from_response_without_an_access_token(self, payload: dict[str, object]) -> None:
        with pytest.raises(ValueError, match="no access_token"):
            Token.from_response(payload, now=NOW)

    def test_repr_and_str_mask_both_tokens(self) -> None:
        text = repr(token())
        assert ACCESS not in text
        assert REFRESH not in text
        assert ACCESS[:4] not in text
        assert str(token()) == text
        assert "expires_at=datetime.datetime(2026, 5, 2" in text
        assert "refresh_token=None" in repr(token(refresh_token=None))

    def test_expires_at_must_be_aware_and_is_kept_in_utc(self) -> None:
        with pytest.raises(ValueError, match="timezone-aware"):
            token(expires_at=datetime(2026, 5, 1, 12, 0))
        brasilia = timezone(timedelta(hours=-3))
        got = token(expires_at=datetime(2026, 5, 1, 9, 0, tzinfo=brasilia))
        assert got.expires_at == NOW
        assert got.expires_at is not None
        assert got.expires_at.tzinfo is UTC

    def test_expiry_helpers(self) -> None:
        t = token(expires_at=NOW + timedelta(seconds=100))
        assert t.expires_in(NOW) == 100
        assert not t.is_expiring(99, NOW)
        assert t.is_expiring(100, NOW)
        assert t.is_expiring(0, NOW + timedelta(seconds=101))
        unknown = token(expires_at=None)
        assert unknown.expires_in(NOW) is None
        assert not unknown.is_expiring(10**9, NOW)

    def test_dict_round_trip(self) -> None:
        data = token().to_dict()
        assert data == {
            "access_token": ACCESS,
            "refresh_token": REFRESH,
            "expires_at": "2026-05-02T12:00:00Z",
        }
        assert Token.from_dict(data) == token()
        assert Token.from_dict(token(expires_at=None, refresh_token=None).to_dict()) == token(
            expires_at=None, refresh_token=None
        )

    def test_from_dict_reads_offsets_and_assumes_utc_when_none(self) -> None:
        base = {"access_token": ACCESS}
        assert (
            Token.from_dict({**base, "expires_at": "2026-05-01T09:00:00-03:00"}).expires_at == NOW
        )
        assert Token.from_dict({**base, "expires_at": "2026-05-01T12:00:00"}).expires_at == NOW


class TestMemoryTokenStore:
    async def test_load_save_and_lock(self) -> None:
        store = MemoryTokenStore()
        assert isinstance(store, TokenStore)
        assert await store.load() is None
        await store.save(token())
        assert await store.load() == token()
        async with store.lock():
            pass
        assert ACCESS not in repr(store)


class TestFileTokenStore:
    async def test_missing_file_is_no_token(self, tmp_path: Path) -> None:
        store = FileTokenStore(tmp_path / "tokens.json")
        assert isinstance(store, TokenStore)
        assert await store.load() is None

    async def test_save_writes_json_with_mode_0600(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens.json"
        store = FileTokenStore(str(path))
        await store.save(token())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text()) == {
            "access_token": ACCESS,
            "refresh_token": REFRESH,
            "expires_at": "2026-05-02T12:00:00Z",
        }
        assert await FileTokenStore(path).load() == token()
        assert sorted(os.listdir(tmp_path)) == ["tokens.json"]

    async def test_save_creates_a_private_folder_for_a_first_login(self, tmp_path: Path) -> None:
        path = tmp_path / "config" / "rdfunnel" / "token.json"
        await FileTokenStore(path).save(token())
        assert await FileTokenStore(path).load() == token()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700

    async def test_save_replaces_a_looser_file_with_a_0600_one(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens.json"
        path.write_text("{}")
        path.chmod(0o644)
        await FileTokenStore(path).save(token())
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    async def test_save_is_atomic(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        path = tmp_path / "tokens.json"
        store = FileTokenStore(path)
        await store.save(token())
        before = path.stat().st_ino
        replaced: list[tuple[str, str]] = []
        real_replace = os.replace

        def spy(src: str, dst: str) -> None:
            # At the moment of the swap the old file is still whole and the new one complete.
            assert json.loads(path.read_text())["access_token"] == ACCESS
            assert json.loads(Path(src).read_text())["access_token"] == "new"
            assert stat.S_IMODE(os.stat(src).st_mode) == 0o600
            assert Path(src).parent == tmp_path
            replaced.append((src, os.fspath(dst)))
            real_replace(src, dst)

        monkeypatch.setattr(os, "replace", spy)
        await store.save(token(access_token="new"))
        assert len(replaced) == 1
        assert replaced[0][1] == os.fspath(path)
        assert path.stat().st_ino != before

    async def test_failed_save_leaves_the_old_file_and_no_debris(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "tokens.json"
        store = FileTokenStore(path)
        await store.save(token())

        def broken(src: str, dst: str) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "replace", broken)
        with pytest.raises(TokenStoreError, match="cannot write token file") as caught:
            await store.save(token(access_token="new-secret"))
        assert str(path) in str(caught.value)
        assert "new-secret" not in str(caught.value)
        assert await store.load() == token()
        assert sorted(os.listdir(tmp_path)) == ["tokens.json"]

    @pytest.mark.parametrize(
        ("content", "reason"),
        [
            ('{"access_token": "' + ACCESS + '", ', "not JSON"),
            ("", "not JSON"),
            ('["' + ACCESS + '"]', "expected a JSON object"),
            ('{"refresh_token": "' + REFRESH + '"}', "access_token is missing"),
            ('{"access_token": "' + ACCESS + '", "expires_at": "tomorrow"}', "ISO 8601"),
            ('{"access_token": "' + ACCESS + '", "expires_at": 5}', "ISO 8601"),
            ('{"access_token": "' + ACCESS + '", "refresh_token": 7}', "refresh_token"),
        ],
    )
    async def test_corrupt_file_is_a_clear_error_naming_the_path(
        self, tmp_path: Path, content: str, reason: str
    ) -> None:
        path = tmp_path / "tokens.json"
        path.write_text(content)
        with pytest.raises(TokenStoreError) as caught:
            await FileTokenStore(path).load()
        message = str(caught.value)
        assert isinstance(caught.value, RDStationError)
        assert str(path) in message
        assert reason in message
        assert ACCESS not in message
        assert REFRESH not in message
        assert caught.value.__cause__ is None

    async def test_unreadable_file_is_a_clear_error(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens.json"
        path.mkdir()  # unreadable as a file, whoever runs the tests
        with pytest.raises(TokenStoreError, match="cannot read token file") as caught:
            await FileTokenStore(path).load()
        assert str(path) in str(caught.value)

    async def test_lock_serializes_coroutines_and_store_instances(self, tmp_path: Path) -> None:
        path = tmp_path / "tokens.json"
        stores = [FileTokenStore(path), FileTokenStore(path)]
        inside = 0
        most = 0

        async def hold(store: FileTokenStore) -> None:
            nonlocal inside, most
            async with store.lock():
                inside += 1
                most = max(most, inside)
                for _ in range(5):
                    await asyncio.sleep(0)
                inside -= 1

        await asyncio.gather(*(hold(stores[i % 2]) for i in range(6)))
        assert most == 1
        assert stat.S_IMODE(os.stat(f"{path}.lock").st_mode) & 0o077 == 0

    async def test_lock_is_released_after_an_error(self, tmp_path: Path) -> None:
        store = FileTokenStore(tmp_path / "tokens.json")
        with pytest.raises(RuntimeError):
            async with store.lock():
                raise RuntimeError("boom")
        async with asyncio.timeout(5), FileTokenStore(tmp_path / "tokens.json").lock():
            pass

    def test_repr_names_the_path(self, tmp_path: Path) -> None:
        assert (
            repr(FileTokenStore(tmp_path / "t.json"))
            == f"FileTokenStore({str(tmp_path / 't.json')!r})"
        )


async def test_a_caller_cancelled_while_waiting_for_the_lock_leaves_it_free(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    holder, waiter = FileTokenStore(path), FileTokenStore(path)
    entered = asyncio.Event()

    async def wait_for_lock() -> None:
        async with waiter.lock():
            entered.set()

    async with holder.lock():
        task = asyncio.create_task(wait_for_lock())
        for _ in range(5):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert not entered.is_set()
    entered.clear()
    await asyncio.wait_for(wait_for_lock(), 10)  # the abandoned acquisition was released
    assert entered.is_set()
