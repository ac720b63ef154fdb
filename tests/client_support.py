"""Helpers for the client tests: distinct synthetic images, golden lookups, self-signed certificates."""
from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import numpy as np

from conftest import IMAGE_NAMES, IMAGES, golden_features
from measure import triton_stats
from measure.images import noise_pngs


def distinct_images(count: int, side: int = 40, seed: int = 0) -> list[bytes]:
    """`count` small PNGs of seeded noise: every one gives a clearly different feature vector."""
    return noise_pngs(count, side, seed, compress_level=1)


def golden_rows(names: list[str], checkpoint: str = "tiny-vit-b32") -> np.ndarray:
    expected = golden_features(checkpoint)
    return np.stack([expected[name] for name in names])


def image_paths() -> list[Path]:
    return [IMAGES / name for name in IMAGE_NAMES]


def assert_rows_distinct(features: np.ndarray) -> None:
    """Guard for order tests: if two rows were alike, a swap could go unnoticed."""
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -1)
    assert similarity.max() < 0.999, "test images are too alike to prove order"


def preprocess_stats(url: str) -> tuple[int, int]:
    """(inference_count, execution_count) of clip_preprocess: how many images and batches the server ran."""
    counters = triton_stats.read(url, "clip_preprocess")["clip_preprocess"]
    return counters["inference_count"], counters["execution_count"]


def self_signed_certificate(directory: Path, name: str, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A fresh key and a self-signed certificate valid for `host` (as IP SAN and CN); returns (cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path
