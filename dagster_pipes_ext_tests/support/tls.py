"""Certificates (trustme) and a real TLS ``dask scheduler`` + ``dask worker`` on 127.0.0.1.

:func:`make_certs` writes a CA, a server certificate for ``127.0.0.1``/``localhost`` (used by the
scheduler and the workers) and a client certificate, plus a second, unrelated CA with its own
client certificate (for "wrong CA" checks), as PEM files in a temporary directory.

:func:`start_tls_cluster` starts ``dask scheduler --protocol tls --tls-ca-file --tls-cert
--tls-key`` (host 127.0.0.1, port 0, ``--scheduler-file``) and import-blocked ``dask worker``
processes on it, through :mod:`dagster_pipes_ext_tests.support.processes`. With
``require_encryption=True`` the scheduler and the workers run with
``DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION=True``.

How a client connects (Dask verifies the peer against the CA and presents its own certificate;
both sides require a certificate; hostnames are not checked)::

    Client(cluster.address, security=cluster.certs.security())
    # or, with the environment of cluster.certs.client_env() (Dask config):
    Client(cluster.address)
    # or through the scheduler file (it holds the tls:// address):
    Client(scheduler_file=str(cluster.scheduler_file), security=cluster.certs.security())
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dagster_pipes_ext_tests.support.processes import DaskProcesses, start_scheduler, start_worker


@dataclass(frozen=True)
class TlsCerts:
    """PEM files: ``ca``, ``server_*`` (scheduler and workers), ``client_*``, ``other_*``."""

    directory: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A second CA that signed nothing the cluster trusts."""
    other_client_cert: Path
    other_client_key: Path

    def security(self, require_encryption: bool = True, **overrides: object):
        """A ``distributed.Security`` for a client of the TLS cluster."""
        from distributed import Security

        kwargs: dict[str, object] = {
            "tls_ca_file": str(self.ca),
            "tls_client_cert": str(self.client_cert),
            "tls_client_key": str(self.client_key),
            "require_encryption": require_encryption,
        }
        kwargs.update(overrides)
        return Security(**kwargs)  # type: ignore[arg-type]

    def client_env(self, require_encryption: bool = False) -> dict[str, str]:
        """The same client configuration as Dask config environment variables."""
        env = {
            "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(self.ca),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(self.client_cert),
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(self.client_key),
        }
        if require_encryption:
            env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] = "True"
        return env

    def server_args(self) -> list[str]:
        """The ``--tls-*`` options of ``dask scheduler`` / ``dask worker``."""
        return [
            "--tls-ca-file",
            str(self.ca),
            "--tls-cert",
            str(self.server_cert),
            "--tls-key",
            str(self.server_key),
        ]


def make_certs(directory: Path | None = None) -> TlsCerts:
    """Generate the CA, server and client certificates (ECDSA, trustme) into ``directory``."""
    import trustme

    d = Path(directory or tempfile.mkdtemp(prefix="pipes-tls-"))
    d.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="dagster-pipes-ext tests")
    server = ca.issue_cert("127.0.0.1", "localhost", common_name="localhost")
    # trustme leaf certificates carry both the serverAuth and clientAuth usages.
    client = ca.issue_cert("dask-client.localhost", common_name="dask-client")
    other_ca = trustme.CA(organization_name="unrelated CA")
    other_client = other_ca.issue_cert("dask-client.localhost", common_name="dask-client")

    certs = TlsCerts(
        directory=d,
        ca=d / "ca.pem",
        server_cert=d / "server.pem",
        server_key=d / "server.key",
        client_cert=d / "client.pem",
        client_key=d / "client.key",
        other_ca=d / "other-ca.pem",
        other_client_cert=d / "other-client.pem",
        other_client_key=d / "other-client.key",
    )
    ca.cert_pem.write_to_path(str(certs.ca))
    server.private_key_pem.write_to_path(str(certs.server_key))
    _write_chain(server, certs.server_cert)
    client.private_key_pem.write_to_path(str(certs.client_key))
    _write_chain(client, certs.client_cert)
    other_ca.cert_pem.write_to_path(str(certs.other_ca))
    other_client.private_key_pem.write_to_path(str(certs.other_client_key))
    _write_chain(other_client, certs.other_client_cert)
    for key in (certs.server_key, certs.client_key, certs.other_client_key):
        key.chmod(0o600)
    return certs


def _write_chain(leaf, path: Path) -> None:
    path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))


@dataclass
class TlsCluster:
    """A TLS scheduler and its workers (``processes``), the certificates, the scheduler file."""

    processes: DaskProcesses
    certs: TlsCerts
    scheduler_file: Path
    require_encryption: bool
    startup_seconds: float = 0.0
    _dirs: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        """``tls://127.0.0.1:<port>``."""
        return self.processes.address

    def stop(self) -> None:
        """Stop the workers and the scheduler by PID, then remove the temporary directories."""
        self.processes.stop()
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)

    def __enter__(self) -> TlsCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_tls_cluster(
    n_workers: int = 1,
    *,
    require_encryption: bool = False,
    certs: TlsCerts | None = None,
    blocked: bool = True,
    nthreads: int = 2,
    worker_env: dict[str, str] | None = None,
) -> TlsCluster:
    """Start a ``tls://`` scheduler on 127.0.0.1 and ``n_workers`` TLS workers; wait for them."""
    import time

    from distributed import Client

    started = time.monotonic()
    own_certs = certs is None
    certs = certs or make_certs()
    workdir = Path(tempfile.mkdtemp(prefix="pipes-dask-tls-"))
    worker_tmp = workdir / "tmp"
    worker_tmp.mkdir()
    env = {"DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"} if require_encryption else {}
    proc, address, _ = start_scheduler(
        workdir,
        env_overrides=env,
        extra_args=["--protocol", "tls", *certs.server_args()],
    )
    cluster = TlsCluster(
        processes=DaskProcesses(
            address=address, scheduler=proc, worker_dir=str(workdir), worker_tmp=str(worker_tmp)
        ),
        certs=certs,
        scheduler_file=workdir / "scheduler.json",
        require_encryption=require_encryption,
        _dirs=[workdir, certs.directory] if own_certs else [workdir],
    )
    try:
        for i in range(n_workers):
            cluster.processes.workers.append(
                start_worker(
                    address,
                    workdir,
                    name=f"tls-w{i}",
                    nthreads=nthreads,
                    blocked=blocked,
                    tmpdir=str(worker_tmp),
                    env_overrides={**env, **(worker_env or {})},
                    # The worker's HTTP server (health, metrics) also on loopback.
                    extra_args=[*certs.server_args(), "--dashboard-address", "127.0.0.1:0"],
                )
            )
        with Client(address, security=certs.security(), timeout=30, set_as_default=False) as c:
            c.wait_for_workers(n_workers, timeout=60)
    except BaseException:
        cluster.stop()
        raise
    cluster.startup_seconds = time.monotonic() - started
    return cluster
