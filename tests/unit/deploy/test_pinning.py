"""App pinning: a FAB's digest pins its exact bytes, a site's trusted-apps.toml says which
digests it runs, and the executor's hook refuses anything else before Flower installs it
(Flower's own installer behind it)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

from fedllm import deploy
from fedllm.deploy.pinning import pinned_home, trusted_app
from fedllm.deploy.worker import pinned_install
from fedllm.errors import AppNotTrustedError, ConfigError
from tests.support.outsider_app import write_outsider_app

# Flower's FAB builder calls a pathspec API that warns on every pattern.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pathspec")


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("apps") / "otherapp"
    return write_outsider_app(folder, folder / "marker")


@pytest.fixture(scope="module")
def fab(app: Path) -> bytes:
    return deploy.build_fab(app)


def test_the_digest_pins_the_apps_content_not_its_location(
    app: Path, fab: bytes, tmp_path: Path
) -> None:
    copy = shutil.copytree(app, tmp_path / "copy" / "otherapp")
    assert deploy.build_fab(copy) == fab  # a deterministic zip: same files, same bytes
    client = copy / "otherapp" / "client_app.py"
    client.write_text(client.read_text().replace("app = ClientApp()", "app = ClientApp()  # x"))
    assert deploy.FabInfo.of(deploy.build_fab(copy)).sha256 != deploy.FabInfo.of(fab).sha256


def test_a_fab_names_its_app_and_version(fab: bytes) -> None:
    info = deploy.FabInfo.of(fab)
    assert (info.app, info.version, info.size) == ("@outsider/otherapp", "1.0.0", len(fab))
    assert info.describe() == f"@outsider/otherapp 1.0.0 (sha256 {info.sha256})"
    assert deploy.FabInfo.of(b"not a zip").describe().startswith("an unreadable FAB (sha256 ")


def test_a_folder_without_pyproject_is_not_an_app(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a Flower App"):
        deploy.build_fab(tmp_path)


def test_only_pinned_digests_pass_and_the_refusal_tells_nothing_about_the_site(
    fab: bytes,
) -> None:
    info = deploy.FabInfo.of(fab)
    other = deploy.FabInfo("ab" * 32, "@fedllm/fedllm", "0.1.0", 0)
    trusted = deploy.TrustedApps().trust(trusted_app(other, "reviewed"))
    with pytest.raises(AppNotTrustedError) as refused:
        trusted.check(info)
    assert str(refused.value) == (
        f"this site does not run @outsider/otherapp 1.0.0 (sha256 {info.sha256}): "
        "the site has not pinned it"
    )
    assert trusted.trust(trusted_app(info, "reviewed")).check(info).sha256 == info.sha256


def test_the_trusted_apps_file_round_trips(tmp_path: Path, fab: bytes) -> None:
    from fedllm.crypto import generate_publisher_key

    key = generate_publisher_key(tmp_path / "publisher", "fedllm-release")
    info = deploy.FabInfo.of(fab)
    made = (
        deploy.TrustedApps()
        .trust(trusted_app(info, "built from /src"))
        .with_publisher("fedllm-release", key)
    )
    path = tmp_path / "trusted-apps.toml"
    made.write(path)
    loaded = deploy.TrustedApps.load(path)
    assert loaded.apps == made.apps and dict(loaded.publishers) == dict(made.publishers)
    assert loaded.untrust(info.sha256).apps == ()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[[app]]\nsha256 = "12ab"\n', "a FAB digest is 64 hex digits"),
        ('[[app]]\napp = "@x/y"\n', "an [[app]] entry has no sha256"),
        ('[publishers]\nx = "ssh-rsa AAAA"\n', "publisher 'x' is not an OpenSSH public key"),
        ("[apps]\n", "unknown section(s) ['apps']"),
        ("app = 3\n", "`app` must be a list"),
        ("[[app]\n", "is not valid TOML"),
    ],
)
def test_a_malformed_trusted_apps_file_is_refused_naming_it(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "trusted-apps.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re_escape(f"{path}")) as err:
        deploy.TrustedApps.load(path)
    assert error in str(err.value)


def test_a_missing_trusted_apps_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="this site trusts no app yet"):
        deploy.TrustedApps.load(tmp_path / "trusted-apps.toml")


def test_untrusting_an_unknown_digest_is_an_error() -> None:
    with pytest.raises(ConfigError, match="no trusted app has digest"):
        deploy.TrustedApps().untrust("cd" * 32)


def test_the_executor_refuses_an_unpinned_fab_before_flower_installs_anything(
    tmp_path: Path, fab: bytes, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from flwr.cli.install import install_from_fab
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    monkeypatch.setattr(TaskIdentity, "_run_id", 1234)  # what Flower sets before installing
    path = tmp_path / "trusted-apps.toml"
    deploy.TrustedApps().trust(trusted_app(deploy.FabInfo("ab" * 32, "?", "?", 0), "x")).write(path)
    install = pinned_install(install_from_fab, path)
    with (
        caplog.at_level(logging.ERROR, logger="fedllm.deploy.worker"),
        pytest.raises(AppNotTrustedError, match="@outsider/otherapp 1.0.0"),
    ):
        install(fab, skip_prompt=True)
    assert not (tmp_path / "flwr").exists()  # nothing written, let alone imported
    (line,) = caplog.messages
    digest = deploy.FabInfo.of(fab).sha256
    assert line.startswith("refused run 1234: this site does not run @outsider/otherapp 1.0.0")
    assert f"(sha256 {digest})" in line and "nothing of it was installed or run" in line
    assert f"pinned in {path}: sha256 abababababab...)" in line


def test_the_executor_installs_a_pinned_fab_where_only_it_lives(
    tmp_path: Path, fab: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.install import install_from_fab

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    info = deploy.FabInfo.of(fab)
    path = tmp_path / "trusted-apps.toml"
    deploy.TrustedApps().trust(trusted_app(info, "reviewed")).write(path)
    installed = pinned_install(install_from_fab, path)(fab, skip_prompt=True)
    home = pinned_home(tmp_path / "flwr", info.sha256)
    assert Path(installed).parent == home / "apps"
    assert [p.name for p in (home / "apps").iterdir()] == [
        f"outsider.otherapp.1.0.0.{info.sha256[:8]}"
    ]


def test_an_unreadable_trusted_apps_file_refuses_every_app(
    tmp_path: Path, fab: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli.install import install_from_fab

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr"))
    path = tmp_path / "trusted-apps.toml"
    path.write_text("not toml [")
    with pytest.raises(AppNotTrustedError, match="its list of trusted apps is unreadable"):
        pinned_install(install_from_fab, path)(fab, skip_prompt=True)
    assert not (tmp_path / "flwr").exists()


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def _install_in_a_process(fab: bytes, trusted: Path, home: Path, done: Any) -> None:
    import os

    from flwr.cli.install import install_from_fab

    os.environ["FLWR_HOME"] = str(home)
    installed = Path(pinned_install(install_from_fab, trusted)(fab, skip_prompt=True))
    done.put(sorted(p.name for p in installed.iterdir()))


def test_a_worker_installs_only_while_no_other_install_of_that_fab_runs(
    tmp_path: Path, fab: bytes
) -> None:
    """Flower's installer makes the app folder before it copies the files in, and hands an
    existing folder back as installed, so two workers installing one FAB into one Flower home
    at once could load a half-copied app (seen in CI: `Cannot find pyproject.toml`). Installs
    take the pinned home's lock: while another holds it, a worker waits; then it gets the
    whole app."""
    import fcntl
    import multiprocessing

    from fedllm.deploy.worker import INSTALL_LOCK

    info = deploy.FabInfo.of(fab)
    trusted = tmp_path / "trusted-apps.toml"
    deploy.TrustedApps().trust(trusted_app(info, "reviewed")).write(trusted)
    home = tmp_path / "flwr"
    pinned = pinned_home(home, info.sha256)
    pinned.mkdir(parents=True)
    context = multiprocessing.get_context("spawn")
    done = context.Queue()
    worker = context.Process(target=_install_in_a_process, args=(fab, trusted, home, done))
    with open(pinned / INSTALL_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another install is running
        worker.start()
        worker.join(8)  # ample for a spawn and an install of this small app
        assert worker.is_alive(), "the worker installed while another install held the lock"
        fcntl.flock(lock, fcntl.LOCK_UN)
    worker.join(60)
    assert worker.exitcode == 0
    assert "pyproject.toml" in done.get(timeout=5)
