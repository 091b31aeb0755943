"""The offline installer: build the x86_64 tarball, install it with no network, run the agent.

Building downloads the cp311 wheelhouse from PyPI once (about 46 MB; skipped when PyPI is not
reachable, or give a built tarball in ``GAPWATCH_EDGE_TARBALL``). The install then runs in a
network namespace with no interface but loopback (``unshare -n``) when the kernel allows it,
else with ``--no-index`` and a dead proxy, so any attempt to reach an index fails. About
1-2 minutes here, most of it the download.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _pypi_reachable() -> bool:
    try:
        with socket.create_connection(("pypi.org", 443), timeout=5):
            return True
    except OSError:
        return False


def _python311() -> str:
    base = getattr(sys, "_base_executable", sys.executable)
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the wheelhouse is cp311; this interpreter is not 3.11")
    return str(base)


def _no_network_prefix() -> list[str]:
    unshare = shutil.which("unshare")
    if (
        unshare
        and subprocess.run([unshare, "-rn", "true"], check=False, capture_output=True).returncode
        == 0
    ):
        return [unshare, "-rn"]
    return []


def test_tarball_installs_and_runs_with_no_network(tmp_path: Path) -> None:
    if platform.machine() != "x86_64":
        pytest.skip("this test installs the x86_64 tarball")
    arch = "x86_64"
    given = os.environ.get("GAPWATCH_EDGE_TARBALL")
    if given:
        tarball = Path(given)
    else:
        if not _pypi_reachable():
            pytest.skip("PyPI is not reachable: cannot build the wheelhouse")
        subprocess.run(
            [
                str(REPO / "deploy/edge/build-offline"),
                *("--python", sys.executable, "--out", str(tmp_path / "dist"), arch),
            ],
            check=True,
            cwd=REPO,
        )
        tarball = tmp_path / "dist" / f"gapwatch-edge-{VERSION}-linux-{arch}.tar.gz"
    assert tarball.name == f"gapwatch-edge-{VERSION}-linux-{arch}.tar.gz"
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        tar.extractall(tmp_path / "x", filter="data")
    top = f"gapwatch-edge-{VERSION}-linux-{arch}"
    for part in ("install.sh", "agent.toml", "gapwatch-agent.service", "SHA256SUMS"):
        assert f"{top}/{part}" in names
    wheels = [n for n in names if n.endswith(".whl")]
    assert any("/gapwatch-" in w for w in wheels)
    assert any("onnxruntime" in w and "cp311" in w for w in wheels)

    prefix = tmp_path / "root"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "PYTHON"))}
    env |= {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    cmd = [str(tmp_path / "x" / top / "install.sh"), "--prefix", str(prefix)]
    cmd += ["--python", _python311(), "--no-systemd"]
    done = subprocess.run(
        _no_network_prefix() + cmd,
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    gw = prefix / "opt" / "gapwatch" / "bin" / "gapwatch"
    out = subprocess.run(
        [str(gw), "agent", "--help"], check=False, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0 and "SIGHUP re-reads the config" in out.stdout
    sample = subprocess.run(
        [str(gw), "agent", "--sample-config"], check=False, env=env, capture_output=True, text=True
    )
    assert sample.stdout == (REPO / "deploy/edge/agent.toml").read_text()
    py = prefix / "opt" / "gapwatch" / "bin" / "python"
    probe = "import onnxruntime, numpy, paho.mqtt.client, kafka, orjson, crc32c, cryptography"
    assert subprocess.run([str(py), "-c", probe], check=False, env=env).returncode == 0
    unit = (prefix / "etc/systemd/system/gapwatch-agent.service").read_text()
    assert f"ExecStart={gw} agent --config {prefix}/etc/gapwatch/agent.toml" in unit
    assert "Type=notify" in unit
    toml = (prefix / "etc/gapwatch/agent.toml").read_text()
    assert f'state_dir = "{prefix}/var/lib/gapwatch"' in toml
    assert (prefix / "etc/gapwatch/agent.env").stat().st_mode & 0o077 == 0
    # the installed agent validates its config (no bundle yet: exit 2 naming the bundle root)
    check = subprocess.run(
        [str(gw), "agent", "--config", str(prefix / "etc/gapwatch/agent.toml"), "--check"],
        check=False,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 2 and "bundles" in check.stderr, check.stderr
