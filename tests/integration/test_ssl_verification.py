"""External mode's TLS, as the README ("Authentication") documents it: `require` by default, and
`verify-full` with `PGSSLROOTCERT` checking the server certificate. Against a real PostgreSQL 15 with
TLS on, certificates made by openssl for the test; the program's preflight is the client."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devsupport.local_postgres import LocalPostgres
from infra.config import DictSource, ExternalServer, load
from infra.preflight import PreflightError, check_external_server

pytestmark = pytest.mark.integration


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make the test certificates", pytrace=False)
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(cwd: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=cwd)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalPostgres, Path, Path]]:
    certs = tmp_path_factory.mktemp("tls")
    make_ca(certs, "ca")
    make_ca(certs, "other-ca")
    (certs / "san.cnf").write_text("subjectAltName = IP:127.0.0.1, DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
            "-out", "server.csr", cwd=certs)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.cnf", "-out", "server.crt", cwd=certs)
    server = LocalPostgres()
    # the server's own directory (owned by the server's user once started): the key must be its own
    server_dir = Path(server.workdir) / "tls"
    server_dir.mkdir()
    for name in ("server.crt", "server.key"):
        shutil.copy(certs / name, server_dir / name)
    (server_dir / "server.key").chmod(0o600)
    server.extra_settings = {
        "ssl": "on", "ssl_cert_file": str(server_dir / "server.crt"), "ssl_key_file": str(server_dir / "server.key"),
    }
    if server._as_postgres:
        for path in (server_dir, server_dir / "server.crt", server_dir / "server.key"):
            shutil.chown(path, "postgres", "postgres")
    server.start()
    try:
        yield server, certs / "ca.crt", certs / "other-ca.crt"
    finally:
        server.stop()


def preflight(server: LocalPostgres, sslmode: str) -> None:
    a = server.address
    check_external_server(server=ExternalServer(host=a.host, port=a.port, admin_user=a.user,
                                                admin_password_key="externalAdminPassword", sslmode=sslmode,
                                                admin_database="postgres", superuser=False),
                          password=a.password)


def test_external_mode_defaults_to_sslmode_require() -> None:
    cfg = load(DictSource({"mode": "external", "externalHost": "db.example", "externalAdminPassword": "x"}), "ns")
    assert isinstance(cfg.server, ExternalServer) and cfg.server.sslmode == "require"


def test_verify_full_with_pgsslrootcert_checks_the_server_certificate(
    tls_server: tuple[LocalPostgres, Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    server, ca, other_ca = tls_server
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt to fall back on
    preflight(server, "require")  # encrypted, identity not checked: the default works without a CA

    monkeypatch.setenv("PGSSLROOTCERT", str(ca))
    preflight(server, "verify-full")  # the documented way: the CA bundle, verify-full

    monkeypatch.setenv("PGSSLROOTCERT", str(other_ca))
    with pytest.raises(PreflightError, match="certificate verify failed"):
        preflight(server, "verify-full")

    monkeypatch.delenv("PGSSLROOTCERT")
    with pytest.raises(PreflightError, match="root certificate file"):
        preflight(server, "verify-full")
