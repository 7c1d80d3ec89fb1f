"""The node bootstrap installs from the site's package registry (issue: a vCluster is a running
HPC system): the repository files it writes make Debian's real apt fetch a package from a
registry on 127.0.0.1 that asks for basic authentication with an access token, as Artifact
Registry does (`oauth2accesstoken`), and prefer it to every other source. dnf (the clouds'
Rocky Linux and Amazon Linux images) does not run here: its repository file is checked as text."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "node"))
from vcnode import bootstrap  # noqa: E402  (the node package: what runs on nodes, tested as such)

TOKEN = "ya29.an-access-token-of-the-node"
SUITE = "gcp-zurich-deb"

pytestmark = pytest.mark.skipif(shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None, reason="needs apt and dpkg")


def _registry(root: Path) -> None:
    """An APT repository laid out as Artifact Registry serves one: dists/SUITE/main."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    package = root / "build" / "vcluster-probe"
    (package / "DEBIAN").mkdir(parents=True)
    (package / "DEBIAN" / "control").write_text(
        "Package: vcluster-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: site <site@example.org>\nDescription: probe\n"
    )
    pool = root / "projects" / "p" / "pool"
    pool.mkdir(parents=True)
    deb = pool / "vcluster-probe_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(package), str(deb)], check=True, capture_output=True)
    data = deb.read_bytes()
    dists = root / "projects" / "p" / "dists" / SUITE
    index = dists / "main" / f"binary-{arch}" / "Packages"
    index.parent.mkdir(parents=True)
    index.write_text(
        "Package: vcluster-probe\nVersion: 1.0\nArchitecture: all\nMaintainer: site <site@example.org>\n"
        f"Filename: pool/{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\nDescription: probe\n\n"
    )
    text = index.read_bytes()
    (dists / "Release").write_text(
        f"Origin: site\nSuite: {SUITE}\nCodename: {SUITE}\nArchitectures: {arch}\nComponents: main\nSHA256:\n"
        f" {hashlib.sha256(text).hexdigest()} {len(text)} main/binary-{arch}/Packages\n"
    )


@pytest.fixture
def registry(tmp_path):
    """The repository behind basic authentication, on 127.0.0.1; yields (url, what it was asked)."""
    root = tmp_path / "registry"
    _registry(root)
    asked = []
    wanted = "Basic " + base64.b64encode(f"oauth2accesstoken:{TOKEN}".encode()).decode()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def do_GET(self):
            granted = self.headers.get("Authorization") == wanted
            asked.append((self.path, granted))
            if not granted:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/projects/p", asked
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _apt(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's apt, confined to this test's directories: its own etc, lists and cache."""
    options = [
        f"Dir::Etc={tmp_path / 'etc' / 'apt'}", f"Dir::State::Lists={tmp_path / 'lists'}", f"Dir::Cache={tmp_path / 'cache'}",
        "Dir::State::status=/var/lib/dpkg/status", "Debug::NoLocking=1", "APT::Sandbox::User=root",
    ]
    for d in ("lists/partial", "cache/archives/partial"):
        (tmp_path / d).mkdir(parents=True, exist_ok=True)
    return subprocess.run(["apt-get", *(f"-o{o}" for o in options), *args], capture_output=True, text=True, timeout=120)


def test_apt_installs_from_the_sites_registry_with_the_nodes_token(tmp_path, registry):
    url, asked = registry
    source = {"url": url, "suite": SUITE, "components": "main", "login": "oauth2accesstoken", "password": TOKEN}
    files = bootstrap.repository_files("apt", source, etc=tmp_path / "etc")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    done = _apt(tmp_path, "update")
    assert done.returncode == 0, done.stdout + done.stderr
    done = _apt(tmp_path, "install", "-y", "--download-only", "vcluster-probe")
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "cache" / "archives" / "vcluster-probe_1.0_all.deb").exists()
    assert asked and all(granted for _, granted in asked), asked  # every request carried the node's token
    assert any(path.endswith(".deb") for path, _ in asked)
    policy = subprocess.run(["apt-cache", f"-oDir::Etc={tmp_path / 'etc' / 'apt'}", f"-oDir::State::Lists={tmp_path / 'lists'}",
                             f"-oDir::Cache={tmp_path / 'cache'}", "policy", "vcluster-probe"], capture_output=True, text=True)
    assert f"990 {url} {SUITE}/main" in policy.stdout, policy.stdout  # preferred to the image's own repositories
    assert TOKEN not in files[tmp_path / "etc" / "apt" / "sources.list.d" / "vcluster-site.list"], "the token is in auth.conf.d only"


def test_without_the_token_the_registry_refuses_and_apt_says_so(tmp_path, registry):
    url, asked = registry
    files = bootstrap.repository_files("apt", {"url": url, "suite": SUITE, "components": "main"}, etc=tmp_path / "etc")
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    done = _apt(tmp_path, "update")
    assert "401" in done.stdout + done.stderr and not any(granted for _, granted in asked)


def test_the_dnf_repository_is_the_registry_first_with_the_token(tmp_path):
    source = {"url": "https://europe-west6-yum.pkg.dev/projects/p/gcp-zurich-rpm", "suite": "gcp-zurich-rpm",
              "components": "main", "login": "oauth2accesstoken", "password": TOKEN}
    ((path, text),) = bootstrap.repository_files("dnf", source, etc=tmp_path).items()
    assert path == tmp_path / "yum.repos.d" / "vcluster-site.repo"
    assert text.splitlines() == [
        "[vcluster-site]", "name=the site's package registry", "baseurl=https://europe-west6-yum.pkg.dev/projects/p/gcp-zurich-rpm",
        "enabled=1", "priority=1", "gpgcheck=0", "repo_gpgcheck=0", "username=oauth2accesstoken", f"password={TOKEN}",
    ]
    ((_, local),) = bootstrap.repository_files("dnf", {"url": "file:///var/lib/vcluster/packages/rpm", "suite": "./"}, etc=tmp_path).items()
    assert "baseurl=file:///var/lib/vcluster/packages/rpm" in local and "password" not in local  # AWS: the synced bucket
