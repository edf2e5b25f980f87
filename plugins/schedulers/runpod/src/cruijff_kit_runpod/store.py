"""The S3-compatible bucket between this machine and the pods.

This machine writes a run's inputs with its own credentials and gives the pod pre-signed URLs for
exactly the objects it reads and writes (inputs; results, status, done marker), so the pod holds
no bucket credentials. Each object lies under a key prefix of its own pod launch (a random token),
each link signs one object and one method and expires soon after the pod's time limit, and a
bundle that the bucket would serve without a link is deleted before any pod starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cruijff_kit import CkError
from cruijff_kit.files import parse_json_text

#: The longest validity S3 accepts for a pre-signed (SigV4) URL.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600


class StoreError(CkError):
    """The bucket could not be read or written."""


class ObjectStore:
    """A bucket and key prefix; ``location`` is the non-secret dict kept in the run folder."""

    def __init__(self, location: dict[str, Any]) -> None:
        self.location = dict(location)
        self.bucket = str(location["bucket"])
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            loc = self.location
            session = boto3.session.Session(profile_name=loc.get("aws_profile")) if loc.get("aws_profile") \
                else boto3.session.Session()
            cfg = Config(signature_version="s3v4", s3={"addressing_style": loc.get("addressing_style") or "auto"},
                         retries={"max_attempts": 5, "mode": "standard"},
                         # plain PUTs: S3-compatible stores (R2, B2, MinIO) reject newer default checksums
                         request_checksum_calculation="when_required",
                         response_checksum_validation="when_required")
            self._client = session.client("s3", endpoint_url=loc.get("endpoint_url"),
                                          region_name=loc.get("region"), config=cfg)
        return self._client

    def key(self, *parts: str) -> str:
        """A key under the profile's prefix."""
        prefix = str(self.location.get("prefix") or "").strip("/")
        return "/".join([p for p in [prefix, *parts] if p])

    # ------------------------------------------------------------------ calls
    def put_file(self, key: str, path: Path) -> None:
        """Upload a local file (multipart for big ones)."""
        try:
            self.client.upload_file(str(path), self.bucket, key)
        except Exception as exc:
            raise self._error("upload", key, exc) from None

    def presign(self, method: str, key: str, seconds: int) -> str:
        """A URL that lets its holder GET or PUT one object for ``seconds``."""
        op = {"GET": "get_object", "PUT": "put_object"}[method]
        try:
            return self.client.generate_presigned_url(op, Params={"Bucket": self.bucket, "Key": key},
                                                      ExpiresIn=int(min(seconds, MAX_PRESIGN_SECONDS)))
        except Exception as exc:
            raise self._error("sign a URL for", key, exc) from None

    def delete(self, key: str) -> None:
        """Remove one object (missing is fine)."""
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key)
        except Exception as exc:
            if not _is_missing(exc):
                raise self._error("delete", key, exc) from None

    def refuse_public(self, key: str, signed_url: str) -> None:
        """Raise a :class:`StoreError` (after deleting the object) when anyone can read ``key`` without a link.

        ``signed_url`` is a pre-signed GET link of the object: the same URL without its signature must
        be refused by the bucket. A bucket (or a policy on it) that serves objects to anyone would make
        every bundle readable without the run's short-lived link.
        """
        import urllib.error
        import urllib.request

        plain = signed_url.split("?", 1)[0]
        try:
            with urllib.request.urlopen(urllib.request.Request(plain, method="HEAD"), timeout=30) as resp:
                public = 200 <= resp.status < 300
        except (urllib.error.URLError, OSError, ValueError):
            public = False  # refused (403), unreachable without a signature, or not HTTP: not public
        if public:
            self.delete(key)
            where = self.location.get("endpoint_url") or "AWS S3"
            raise StoreError(
                f"the bucket {self.bucket} at {where} lets anyone read s3://{self.bucket}/{key} without a link; "
                "cruijff-kit never leaves a run's inputs public, so it deleted the object and started no pod. Turn "
                "off public access on the bucket (no public-read policy or ACL, no public r2.dev/website access) "
                "or name a private bucket under `runpod.store` in your profile.")

    def get_bytes(self, key: str) -> bytes | None:
        """An object's content, or None when it does not exist."""
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            return obj["Body"].read()
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise self._error("read", key, exc) from None

    def get_json(self, key: str) -> Any:
        """A JSON object's content, or None when missing or unreadable."""
        raw = self.get_bytes(key)
        if raw is None:
            return None
        try:
            return parse_json_text(raw, file=key)
        except (ValueError, CkError):  # not JSON, a key twice, nested too deep
            return None

    def download(self, key: str, path: Path) -> bool:
        """Download an object to ``path``; False when it does not exist."""
        try:
            self.client.download_file(self.bucket, key, str(path))
            return True
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise self._error("download", key, exc) from None

    def _error(self, what: str, key: str, exc: Exception) -> StoreError:
        where = self.location.get("endpoint_url") or "AWS S3"
        return StoreError(
            f"cannot {what} s3://{self.bucket}/{key} at {where}: {type(exc).__name__}: {str(exc)[:300]}. Check "
            "`runpod.store` in your profile and the bucket credentials (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or `aws_profile`).")


def _is_missing(exc: Exception) -> bool:
    resp = getattr(exc, "response", None) or {}
    code = str((resp.get("Error") or {}).get("Code", ""))
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404
