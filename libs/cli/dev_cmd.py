"""``syncgov dev certs``: a local CA and certificates for trying mTLS (development only)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Annotated

import typer
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from libs.cli.output import make_console
from libs.runtime.settings import DEFAULT_POLICY_FILE

app = typer.Typer(help="Development helpers.", no_args_is_help=True)
console = make_console()
VALIDITY = datetime.timedelta(days=90)
CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True,
    key_cert_sign=True,
    crl_sign=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    encipher_only=False,
    decipher_only=False,
)


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey | None, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path = path.with_name(path.stem + "-key.pem")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        key_path.chmod(0o600)


def _issue(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool, hosts: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.datetime.now(datetime.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    if server:
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_certs(out: Path, systems: list[str], hosts: list[str]) -> list[Path]:
    """A CA, one server certificate for ``hosts``, one client certificate per system (CN = system id)."""
    out.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    now = datetime.datetime.now(datetime.UTC)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "syncgov development CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(CA_KEY_USAGE, critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    _write(out / "ca.pem", ca_key, ca_cert)
    written = [out / "ca.pem"]
    server_key, server_cert = _issue(ca_key, ca_cert, "syncgov-server", server=True, hosts=hosts)
    _write(out / "server.pem", server_key, server_cert)
    written.append(out / "server.pem")
    for system in systems:
        key, cert = _issue(ca_key, ca_cert, system, server=False, hosts=[])
        _write(out / f"{system}.pem", key, cert)
        written.append(out / f"{system}.pem")
    return written


@app.command()
def certs(
    out: Annotated[Path, typer.Option(help="Folder for the PEM files.")] = Path(".syncgov/certs"),
    policy: Annotated[Path, typer.Option(help="Policy whose systems get client certificates.")] = DEFAULT_POLICY_FILE,
    system: Annotated[list[str] | None, typer.Option(help="Only these systems (repeatable).")] = None,
    host: Annotated[list[str] | None, typer.Option(help="Names the server certificate covers.")] = None,
) -> None:
    """Make a local CA, a server certificate and one client certificate per system (its CN names the system)."""
    systems = system or sorted(yaml.safe_load(policy.read_text()).get("systems", {}))
    written = make_certs(out, systems, host or ["localhost", "127.0.0.1"])
    for path in written:
        console.print(f"wrote {path} (+ key)")
    console.print(
        f"serve mTLS with SYNCGOV_TLS_CERT_FILE={out}/server.pem SYNCGOV_TLS_KEY_FILE={out}/server-key.pem "
        f"SYNCGOV_TLS_CLIENT_CA_FILE={out}/ca.pem"
    )
