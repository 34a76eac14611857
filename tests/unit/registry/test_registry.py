"""The model registry on a local object store, with its index on SQLite and, when
FUNNEL_TEST_POSTGRES_URL is set (CI sets it), on a real PostgreSQL server: the lifecycle and
every rule's refusal (a duplicate version, concurrent pushes, a checksum mismatch, an unknown
version, retiring a version that serves, a corrupt store)."""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from funnel.contracts.bundle import MANIFEST, REQUIRED_FILES, write_manifest
from funnel.contracts.errors import (
    BundleError,
    InvalidInputError,
    RegistryConflictError,
    UnknownVersionError,
)
from funnel.registry import ObjectStore, Registry, RegistryIndex, registry_urls
from funnel.registry.index import normalise_url

PG_URL = os.environ.get("FUNNEL_TEST_POSTGRES_URL")


class StepClock:
    def __init__(self) -> None:
        self.t = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def make_bundle(root: Path, version: str, *, seed: int = 0) -> Path:
    """A bundle directory with the required files (bytes that differ by seed) and a real
    manifest: what the registry moves and checks, without training one."""
    d = root / f"{version}-{seed}"
    for k, rel in enumerate(REQUIRED_FILES):
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(f"{rel} {seed} ".encode() * (50 + k))
    write_manifest(d, {"version": version, "created_at": "2026-12-05T10:00:00+00:00",
                       "dataset": {"name": "synthetic", "fingerprint": f"fp-{seed}"},
                       "lineage": {"command": f"funnel train --seed {seed}",
                                   "parent_version": "v-parent"},
                       "metrics": {"ranker": {"auc": 0.7 + seed / 100}}})
    return d


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.sqlite3'}"
        return
    if not PG_URL:
        pytest.skip("FUNNEL_TEST_POSTGRES_URL is not set (CI sets it): PostgreSQL not tested")
    schema = f"funnel_reg_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(normalise_url(PG_URL))
    with admin.begin() as c:
        c.execute(sa.text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as c:
        c.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def reg(db_url: str, tmp_path: Path) -> Iterator[Registry]:
    r = Registry(ObjectStore(str(tmp_path / "objects")), RegistryIndex(db_url, clock=StepClock()))
    yield r
    r.close()


def test_push_list_show_pull_round_trip(reg: Registry, tmp_path: Path) -> None:
    src = make_bundle(tmp_path / "src", "v1")
    rec = reg.push(src, actor="alice")
    assert rec.status == "staged" and rec.version == "v1"
    assert rec.trained_by == "funnel train --seed 0"
    assert (rec.dataset_fingerprint, rec.parent_version) == ("fp-0", "v-parent")
    assert rec.metrics == {"ranker": {"auc": 0.7}}
    manifest = json.loads((src / MANIFEST).read_text())
    assert {f.path: f.sha256 for f in rec.files if f.path != MANIFEST} == manifest["files"]
    assert rec.pushed_by.startswith("alice#")
    assert [r.version for r in reg.list()] == ["v1"] and reg.list("retired") == []

    b = reg.pull("v1", tmp_path / "cache")
    assert b.path == (tmp_path / "cache" / "v1").resolve()
    for rel in manifest["files"]:
        assert (b.path / rel).read_bytes() == (src / rel).read_bytes()
    assert reg.pull("v1", tmp_path / "cache").path == b.path  # cached: verified, not fetched
    assert [e["action"] for e in reg.index.events("v1")] == ["push"]


def test_a_version_is_immutable_once_pushed(reg: Registry, tmp_path: Path) -> None:
    reg.push(make_bundle(tmp_path, "v1", seed=0))
    with pytest.raises(RegistryConflictError, match=r"already in the registry.*immutable") as e:
        reg.push(make_bundle(tmp_path, "v1", seed=1))
    assert e.value.exit_code == 2
    b = reg.pull("v1", tmp_path / "cache")  # still the first push's bytes
    assert b.manifest["dataset"]["fingerprint"] == "fp-0"


def test_concurrent_pushes_of_one_version_one_wins(reg: Registry, tmp_path: Path) -> None:
    bundles = [make_bundle(tmp_path, "v1", seed=s) for s in range(4)]
    barrier = threading.Barrier(len(bundles))
    outcomes: dict[int, object] = {}

    def push(k: int) -> None:
        barrier.wait()
        try:
            outcomes[k] = reg.push(bundles[k], actor=f"pusher{k}").version
        except RegistryConflictError as e:
            outcomes[k] = e

    threads = [threading.Thread(target=push, args=(k,)) for k in range(len(bundles))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    winners = [k for k, o in outcomes.items() if o == "v1"]
    losers = [o for o in outcomes.values() if isinstance(o, RegistryConflictError)]
    assert len(winners) == 1 and len(losers) == len(bundles) - 1, outcomes
    assert all("being pushed" in str(e) or "already in the registry" in str(e) for e in losers)
    # what the registry holds is the winner's bundle, whole
    b = reg.pull("v1", tmp_path / "cache")
    assert b.manifest["dataset"]["fingerprint"] == f"fp-{winners[0]}"


def test_a_push_whose_checksums_do_not_match_is_refused_before_writing(
        reg: Registry, tmp_path: Path) -> None:
    src = make_bundle(tmp_path, "v1")
    (src / "index/items.faiss").write_bytes(b"changed after the manifest")
    with pytest.raises(BundleError, match=r"index/items\.faiss.*checksum mismatch"):
        reg.push(src)
    assert reg.list() == []
    assert not (tmp_path / "objects" / "bundles" / "v1").exists()
    with pytest.raises(UnknownVersionError):
        reg.show("v1")


def test_a_bundle_whose_version_is_not_a_plain_name_is_refused(reg: Registry,
                                                                tmp_path: Path) -> None:
    """The version becomes a directory and an object key: '../x' must not leave the
    store's prefix or the cache."""
    src = make_bundle(tmp_path, "v1")
    m = json.loads((src / MANIFEST).read_text())
    m["version"] = "../escape"
    (src / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(BundleError, match=r"bad bundle version '\.\./escape'"):
        reg.push(src)
    assert reg.list() == [] and not (tmp_path / "escape").exists()
    with pytest.raises(BundleError, match="bad bundle version"):
        reg.pull("../escape", tmp_path / "cache")


def test_unknown_versions_are_refused_by_name(reg: Registry, tmp_path: Path) -> None:
    for call in (lambda: reg.show("v-nope"), lambda: reg.pull("v-nope", tmp_path / "c"),
                 lambda: reg.verify("v-nope"), lambda: reg.promote("v-nope"),
                 lambda: reg.retire("v-nope")):
        with pytest.raises(UnknownVersionError, match="'v-nope' is not in the registry"):
            call()


def test_a_version_that_serves_cannot_be_retired(reg: Registry, tmp_path: Path) -> None:
    reg.push(make_bundle(tmp_path, "v1", seed=1))
    reg.push(make_bundle(tmp_path, "v2", seed=2))
    rec = reg.promote("v1", stage="ranker", variant="primary", actor="bob")
    assert (rec.status, rec.serving, rec.promoted_by) == ("serving", (("ranker", "primary"),),
                                                          "bob")
    assert rec.promoted_at is not None
    with pytest.raises(RegistryConflictError, match=r"cannot be retired: it serves \(ranker/"):
        reg.retire("v1")
    # named by the live rollout config (given by the caller), though the index has it staged
    with pytest.raises(RegistryConflictError, match="live rollout config"):
        reg.retire("v2", in_use={"v2"})
    # v2 takes v1's place: v1 serves nowhere, goes back to staged and can be retired
    reg.promote("v2", stage="ranker", variant="primary")
    assert reg.show("v1").status == "staged" and reg.show("v1").serving == ()
    retired = reg.retire("v1", actor="carol")
    assert (retired.status, retired.retired_by) == ("retired", "carol")
    with pytest.raises(RegistryConflictError, match="retired"):
        reg.promote("v1")
    assert [r.version for r in reg.list("serving")] == ["v2"]


def test_a_corrupt_object_is_refused_at_pull_and_named_by_verify(
        reg: Registry, tmp_path: Path) -> None:
    reg.push(make_bundle(tmp_path, "v1"))
    stored = tmp_path / "objects" / "bundles" / "v1" / "models" / "user_tower.pt"
    data = bytearray(stored.read_bytes())
    data[10] ^= 0xFF  # one byte
    stored.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"models/user_tower\.pt.*does not match"):
        reg.pull("v1", tmp_path / "cache")
    assert not (tmp_path / "cache" / "v1").exists()
    assert list((tmp_path / "cache").iterdir()) == []  # no partial download left behind
    report = reg.verify("v1", actor="ops")
    assert not report.ok and len(report.bad) == 1 and report.bad[0].startswith(
        "models/user_tower.pt")
    stored.unlink()
    assert "missing" in reg.verify("v1").bad[0]
    assert [e["detail"]["ok"] for e in reg.index.events("v1") if e["action"] == "verify"] \
        == [False, False]


def test_a_dead_push_is_taken_over_only_once_stale(db_url: str, tmp_path: Path) -> None:
    clock = StepClock()
    index = RegistryIndex(db_url, clock=clock)
    reg = Registry(ObjectStore(str(tmp_path / "objects")), index,
                   stale_push=timedelta(minutes=10))
    try:
        index.claim("v1", actor="crashed#1", stale_after=timedelta(minutes=10))
        with pytest.raises(RegistryConflictError, match="being pushed by crashed#1"):
            reg.push(make_bundle(tmp_path, "v1"))
        with pytest.raises(UnknownVersionError, match="has not finished"):
            reg.show("v1")
        clock.t += timedelta(minutes=11)
        assert reg.push(make_bundle(tmp_path, "v1")).status == "staged"
        assert "push-takeover" in [e["action"] for e in index.events("v1")]
    finally:
        reg.close()


def test_registry_urls_defaults_and_a_remote_store_needs_its_index() -> None:
    assert registry_urls(None, None) == ("registry/objects", "sqlite:///registry/index.sqlite3")
    assert registry_urls("/srv/reg", None) == ("/srv/reg", "sqlite:////srv/reg/index.sqlite3")
    with pytest.raises(InvalidInputError, match="--registry-db"):
        registry_urls("s3://bucket/models", None)
    assert registry_urls("s3://b/m", "postgresql://u@h/db") == ("s3://b/m",
                                                                "postgresql://u@h/db")


def test_the_cli_exits_2_with_one_line_on_refusals(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from funnel.cli import app

    monkeypatch.chdir(tmp_path)
    src = make_bundle(tmp_path / "b", "v7")
    runner = CliRunner()
    ok = runner.invoke(app, ["bundle", "push", str(src)])
    assert ok.exit_code == 0, ok.output
    again = runner.invoke(app, ["bundle", "push", str(src)])
    assert again.exit_code != 0
    assert isinstance(again.exception, RegistryConflictError)
    shown = runner.invoke(app, ["bundle", "show", "v7"])
    assert shown.exit_code == 0 and json.loads(shown.output)["status"] == "staged"
    bad = runner.invoke(app, ["bundle", "list", "--status", "live"])
    assert bad.exit_code == 2 and "--status" in bad.output
    assert (tmp_path / "registry" / "index.sqlite3").is_file()
