"""The S3-compatible bucket between this machine and the pods.

This machine writes a run's inputs with its own credentials and gives the pod pre-signed URLs for
exactly the objects it reads and writes (inputs; results, status, done marker), so the pod holds
no bucket credentials. Each object lies under a key prefix of its own pod launch (a random token),
each link signs one object and one method and expires soon after the pod's time limit, and a
bundle that the bucket would serve without a link is deleted before any pod starts.

Every call has a deadline (docs/reliability.md, "Every network call has a total deadline"): botocore
has connect and per-read timeouts and its own retries, and above them each try of a small call (an
object read, a delete, the unsigned check of :meth:`ObjectStore.refuse_public`) has a total deadline
(:func:`cruijff_kit.call_with_deadline`), so an endpoint that trickles bytes or never closes is given
up on after ``call_seconds x attempts`` plus backoff. Large transfers (the bundle upload, the results
download) have a stall deadline instead (:func:`cruijff_kit.call_with_stall_guard` fed by the
transfer's progress callback): given up on when under ``stall_bytes`` move in ``stall_seconds``, never
for being slow. A download lands in a folder of its own and becomes the object's file only when whole.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cruijff_kit import (
    BadResponse,
    CkError,
    DeadlineExceeded,
    DownloadStalled,
    call_with_deadline,
    call_with_stall_guard,
)
from cruijff_kit.files import parse_json_text

#: The longest validity S3 accepts for a pre-signed (SigV4) URL.
MAX_PRESIGN_SECONDS = 7 * 24 * 3600

#: Size of each part of a multipart upload (an upload's progress is counted per part).
PART_BYTES = 8 * 1024 * 1024

T = TypeVar("T")


class StoreError(CkError):
    """The bucket could not be read or written."""


class ObjectStore:
    """A bucket and key prefix; ``location`` is the non-secret dict kept in the run folder."""

    #: Total seconds of one try of a small call (an object read, a delete, the public-access check).
    call_seconds = 60.0
    #: Seconds a large transfer may move under :attr:`stall_bytes` before it counts as stalled.
    stall_seconds = 120.0
    #: Bytes a large transfer must move within each stall window (also the size of its reads).
    stall_bytes = 64 * 1024
    #: Tries of each call (botocore retries inside each try too).
    attempts = 3
    #: Seconds before the second try; doubles each time.
    backoff = 1.0
    #: Seconds to connect to the endpoint.
    connect_seconds = 10.0

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
                         retries={"max_attempts": self.attempts, "mode": "standard"},
                         connect_timeout=self.connect_seconds,
                         # per read, only so that an abandoned try ends: the deadlines above it cut first
                         read_timeout=self.call_seconds + self.stall_seconds,
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
        """Upload a local file (multipart for big ones), under a stall deadline."""
        self._large("upload", key, lambda progress: self.client.upload_file(
            str(path), self.bucket, key, Callback=progress, Config=self._transfer_config()))

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
            self._small("delete", key, lambda: self.client.delete_object(Bucket=self.bucket, Key=key))
        except StoreError:
            raise
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

        def head() -> bool:
            with urllib.request.urlopen(urllib.request.Request(plain, method="HEAD"),
                                        timeout=min(30.0, self.call_seconds)) as resp:
                return 200 <= resp.status < 300

        try:
            public = call_with_deadline(lambda _deadline: head(), self.call_seconds,
                                        f"the unsigned check of s3://{self.bucket}/{key} at {self._where()}")
        except (urllib.error.URLError, OSError, ValueError):
            # refused (403), unreachable without a signature, not HTTP, or no whole answer within the
            # deadline (a server that answers nobody serves nobody): not public
            public = False
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
        return self._get(key, bytes)

    def _get(self, key: str, parse: Callable[[bytes], T]) -> T | None:
        """``parse(content)`` of an object, or None when it does not exist; a body cut short, or one that
        ``parse`` rejects with :class:`BadResponse`, is retried."""
        def read() -> T:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
            try:
                raw = bytes(obj["Body"].read())
            except Exception as exc:  # cut short or dropped mid-body: retried like a 5xx
                raise BadResponse(f"the body of s3://{self.bucket}/{key} ended early ({type(exc).__name__})") \
                    from None
            return parse(raw)

        try:
            return self._small("read", key, read)
        except StoreError:
            raise
        except Exception as exc:
            if _is_missing(exc):
                return None
            raise self._error("read", key, exc) from None

    def get_json(self, key: str) -> Any:
        """A JSON object's content, or None when missing or unreadable (after its tries: a body that is
        not JSON may be one cut short by the endpoint)."""
        def parse(raw: bytes) -> Any:
            try:
                return parse_json_text(raw, file=key)
            except (ValueError, CkError):  # not JSON, a key twice, nested too deep
                raise _NotJson(f"s3://{self.bucket}/{key} is not a JSON object ({len(raw)} bytes)") from None

        try:
            return self._get(key, parse)
        except _NotJson:
            return None

    def download(self, key: str, path: Path) -> bool:
        """Download an object to ``path`` under a stall deadline; False when it does not exist.

        ``path`` appears only once the whole object arrived (a transfer given up on leaves nothing there).
        """
        work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent))
        try:
            self._large("download", key, lambda progress: self.client.download_file(
                self.bucket, key, str(work / path.name), Callback=progress, Config=self._transfer_config()))
            os.replace(work / path.name, path)
        except StoreError as exc:
            if isinstance(exc.__cause__, Exception) and _is_missing(exc.__cause__):
                return False
            raise
        finally:  # a try given up on may still hold a file in there: it goes with the folder
            shutil.rmtree(work, ignore_errors=True)
        return True

    # ------------------------------------------------------------------ deadlines
    def _transfer_config(self) -> Any:
        """One thread per transfer (the try's own, which a stall abandons; a pool of worker threads would
        keep the process alive), no retries of its own. A download reports progress every
        :attr:`stall_bytes`; an upload once per part (:data:`PART_BYTES` at most) when the part is sent."""
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(use_threads=False, io_chunksize=self.stall_bytes, num_download_attempts=1,
                              multipart_threshold=PART_BYTES, multipart_chunksize=PART_BYTES)

    def _where(self) -> str:
        return str(self.location.get("endpoint_url") or "AWS S3")

    def _small(self, what: str, key: str, call: Callable[[], T]) -> T:
        """``call()`` tried :attr:`attempts` times, each try within :attr:`call_seconds` in total."""
        label = f"the {what} of s3://{self.bucket}/{key} at {self._where()}"
        for attempt in range(1, self.attempts + 1):
            try:
                return call_with_deadline(lambda _deadline: call(), self.call_seconds, label)
            except (DeadlineExceeded, BadResponse) as exc:
                if attempt == self.attempts:
                    if isinstance(exc, _NotJson):
                        raise
                    raise self._gave_up(what, key, exc) from None
            time.sleep(self.backoff * 2 ** (attempt - 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def _large(self, what: str, key: str, transfer: Callable[[Callable[[int], None]], Any]) -> None:
        """``transfer(progress)`` tried :attr:`attempts` times, each given up on when it stalls."""
        label = f"the {what} of s3://{self.bucket}/{key} at {self._where()}"
        _ = self.client  # made before the clock starts (it reads no network, but takes a while)
        for attempt in range(1, self.attempts + 1):
            try:
                call_with_stall_guard(transfer, self.stall_seconds, label, self.stall_bytes)
                return
            except DownloadStalled as exc:
                if attempt == self.attempts:
                    raise self._gave_up(what, key, exc) from None
            except Exception as exc:
                raise self._error(what, key, exc) from exc
            time.sleep(self.backoff * 2 ** (attempt - 1))

    def _gave_up(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot {what} s3://{self.bucket}/{key}: the bucket endpoint {self._where()} did not answer in time "
            f"({exc}); gave up after {self.attempts} tries. Nothing partial was kept. Check the endpoint "
            "(`runpod.store.endpoint_url` in your profile) and your network, then run the command again.")

    def _error(self, what: str, key: str, exc: Exception) -> StoreError:
        return StoreError(
            f"cannot {what} s3://{self.bucket}/{key} at {self._where()}: {type(exc).__name__}: {str(exc)[:300]}. Check "
            "`runpod.store` in your profile and the bucket credentials (AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY or `aws_profile`).")


class _NotJson(BadResponse):
    """An object that should hold JSON does not (retried: the endpoint may have cut it short)."""


def _is_missing(exc: Exception) -> bool:
    resp = getattr(exc, "response", None) or {}
    code = str((resp.get("Error") or {}).get("Code", ""))
    status = (resp.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    return code in ("404", "NoSuchKey", "NotFound") or status == 404
