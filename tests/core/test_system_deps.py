"""scripts/system_deps.sh, which `make test` runs before pytest: it installs a missing Debian
package with apt-get as root (or through password-less sudo), and where it cannot, it installs
nothing and stops with the one command to run.

The script runs with a PATH of stubs only: `id` says who we are, `apt-get` records its calls
(and "installs" the browser by creating the file CHROMIUM names), `sudo` exists or not.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ONE_COMMAND = "sudo apt-get install -y --no-install-recommends chromium fonts-dejavu-core"


def _stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(0o755)


def run_script(
    repo_root: Path,
    tmp_path: Path,
    *packages: str,
    uid: int,
    sudo: str | None,
    browser_present: bool = False,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    """Run the script with stubbed id/apt-get/sudo; returns (result, apt-get's call log, the
    browser path the script checks)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    calls = tmp_path / "apt-calls.log"
    browser = tmp_path / "usr-bin-chromium"
    _stub(stubs, "id", f"echo {uid}")
    _stub(
        stubs,
        "apt-get",
        f'echo "$*" >> {calls}\n'
        f'[[ $1 == install ]] && printf "#!/bin/sh\\n" > {browser} && /bin/chmod +x {browser}\n'
        "exit 0",
    )
    if sudo is not None:
        _stub(stubs, "sudo", sudo)
    os.symlink("/usr/bin/env", stubs / "env")
    if browser_present:
        _stub(tmp_path, browser.name, "exit 0")
    result = subprocess.run(
        ["/bin/bash", str(repo_root / "scripts" / "system_deps.sh"), *packages],
        env={"PATH": str(stubs), "CHROMIUM": str(browser)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result, calls, browser


def test_stops_with_the_one_command_when_it_cannot_install(repo_root: Path, tmp_path: Path) -> None:
    result, calls, browser = run_script(repo_root, tmp_path, "chromium", uid=1000, sudo=None)
    assert result.returncode == 1
    assert "chromium" in result.stderr and "not root" in result.stderr
    assert result.stderr.rstrip().endswith(ONE_COMMAND)
    assert not calls.exists() and not browser.exists()  # it tried nothing


def test_sudo_that_wants_a_password_counts_as_cannot(repo_root: Path, tmp_path: Path) -> None:
    result, calls, _ = run_script(repo_root, tmp_path, "chromium", uid=1000, sudo="exit 1")
    assert result.returncode == 1
    assert result.stderr.rstrip().endswith(ONE_COMMAND)
    assert not calls.exists()


@pytest.mark.parametrize(
    ("uid", "sudo"), [(0, None), (1000, 'if [[ $1 == -n ]]; then shift; fi; "$@"')]
)
def test_installs_a_missing_browser_as_root_or_through_sudo(
    repo_root: Path, tmp_path: Path, uid: int, sudo: str | None
) -> None:
    result, calls, browser = run_script(repo_root, tmp_path, "chromium", uid=uid, sudo=sudo)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [
        "update -qq",
        "install -y --no-install-recommends chromium fonts-dejavu-core -qq",
    ]
    assert browser.is_file()


def test_does_nothing_when_the_browser_is_there(repo_root: Path, tmp_path: Path) -> None:
    # Not root and no sudo: had it found the browser missing, it would stop with rc 1.
    result, calls, _ = run_script(
        repo_root, tmp_path, "chromium", uid=1000, sudo=None, browser_present=True
    )
    assert result.returncode == 0, result.stderr
    assert not calls.exists()


def test_unknown_package_is_an_error(repo_root: Path, tmp_path: Path) -> None:
    result, _, _ = run_script(repo_root, tmp_path, "firefox", uid=0, sudo=None)
    assert result.returncode == 2
    assert "unknown package 'firefox'" in result.stderr
