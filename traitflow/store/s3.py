"""Artifacts in an S3 bucket (AWS, Cloudflare R2, MinIO, moto), through a local mirror folder.

The bucket is the truth; `<project root>/.traitflow/s3/<bucket>/<prefix>` mirrors the objects this
machine has read or written, so stages, charts and safetensors work on ordinary files:

- a write goes to the mirror atomically, then uploads (`upload_file`: streamed from disk, multipart
  above 8 MB). S3 shows an object only once its upload completes, so a killed run leaves either
  the old object or the new one, never a partial one;
- a read asks the bucket for the object's ETag (one HEAD) and downloads it (streamed to a temporary
  file, then renamed) only when the mirror's copy is missing or differs; an object gone from the
  bucket is gone for readers too, whatever the mirror holds.

The client is dagster-aws's `S3Resource` with traitflow's settings: the endpoint and region of
the experiment's `storage:` (else boto3's own `AWS_ENDPOINT_URL`, `AWS_REGION`), credentials only
from the environment (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, `AWS_PROFILE`, …), never from
YAML; `checksums: when_required` for S3 APIs that refuse boto3's default CRC checksums (older R2).
Any failure to reach or use the bucket is a one-line TraitflowError naming the storage URI.
"""

import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any, Literal

from dagster_aws.s3 import S3Resource

from traitflow.errors import TraitflowError, TransientError
from traitflow.store.artifacts import ArtifactStore

Checksums = Literal["when_supported", "when_required"]
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
MIRROR = Path(".traitflow") / "s3"  # under the project root
SERVER_SIDE = ("InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "Throttling", "ThrottlingException",
               "TooManyRequests")
ETAG_SUFFIX = ".etag"  # `.<file>.etag` beside each mirrored file: the ETag it was downloaded or uploaded at


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix` -> ("bucket", "some/prefix"); a one-line error if it is not one."""
    rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    prefix = prefix.strip("/")
    if not BUCKET.match(bucket):
        raise TraitflowError(f"storage {uri!r}: {bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.', '-')")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise TraitflowError(f"storage {uri!r}: the prefix must not contain empty, '.' or '..' parts")
    return bucket, prefix


class S3Storage(S3Resource):
    """dagster-aws's S3 resource, plus the client settings traitflow needs (timeouts, checksums)."""

    checksums: Checksums = "when_supported"
    timeout_s: float = 60.0  # to connect, and between two reads of an answer

    def get_client(self) -> Any:
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(profile_name=self.profile_name)
        config = Config(retries={"max_attempts": self.max_attempts, "mode": "standard"}, connect_timeout=min(self.timeout_s, 10.0),
                        read_timeout=self.timeout_s, request_checksum_calculation=self.checksums,
                        response_checksum_validation=self.checksums)
        return session.client("s3", region_name=self.region_name, endpoint_url=self.endpoint_url, use_ssl=self.use_ssl,
                              verify=self.verify, aws_access_key_id=self.aws_access_key_id,
                              aws_secret_access_key=self.aws_secret_access_key, aws_session_token=self.aws_session_token,
                              config=config)


_CLIENTS: dict[tuple, Any] = {}
_CLIENTS_LOCK = threading.Lock()


def s3_client(endpoint_url: str | None, region: str | None, checksums: Checksums = "when_supported") -> Any:
    """One boto3 client per settings and process (clients are thread-safe; making one costs ~0.1 s)."""
    text = os.environ.get("TRAITFLOW_S3_TIMEOUT_S", "60")
    try:
        timeout = float(text)
    except ValueError:
        timeout = 0.0
    if not timeout > 0:
        raise TraitflowError(f"TRAITFLOW_S3_TIMEOUT_S must be a number of seconds above 0, got {text!r}")
    key = (endpoint_url, region, checksums, timeout, os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_PROFILE"))
    with _CLIENTS_LOCK:
        if key not in _CLIENTS:
            _CLIENTS[key] = S3Storage(endpoint_url=endpoint_url, region_name=region, checksums=checksums, max_attempts=3,
                                      timeout_s=timeout).get_client()
        return _CLIENTS[key]


def _reraise(exc: BaseException) -> Any:
    raise exc


def _etag_path(path: Path) -> Path:
    return path.with_name(f".{path.name}{ETAG_SUFFIX}")


class S3ArtifactStore(ArtifactStore):
    """An ArtifactStore whose files live in `s3://bucket/prefix`; `root` is the local mirror."""

    def __init__(self, uri: str, project_root: Path, endpoint_url: str | None = None, region: str | None = None,
                 checksums: Checksums = "when_supported"):
        self.bucket, self.prefix = parse_s3_uri(uri)
        super().__init__(Path(project_root) / MIRROR / self.bucket / self.prefix)
        self.endpoint_url, self.region, self.checksums = endpoint_url, region, checksums
        self._bucket_checked = False

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    @property
    def client(self) -> Any:
        client = s3_client(self.endpoint_url, self.region, self.checksums)
        if not self._bucket_checked:  # once: a missing bucket must not read as "nothing materialized yet"
            self._bucket_checked = True
            if self._call("open the bucket", client.head_bucket, Bucket=self.bucket, missing_ok=True) is None:
                raise TraitflowError(f"storage {self.uri}: bucket {self.bucket!r} does not exist (or is not visible "
                                     "to these credentials)")
        return client

    def check(self) -> None:
        self.client  # noqa: B018 - opening it checks the bucket

    def key(self, path: Path) -> str:
        """The object key of a mirror path."""
        relative = Path(path).relative_to(self.root).as_posix()
        return f"{self.prefix}/{relative}" if self.prefix else relative

    def location(self, path: Path) -> str:
        return f"s3://{self.bucket}/{self.key(path)}"

    # ------------------------------------------------------------------ the bucket, in one place
    def _call(self, what: str, fn: Any, *args: Any, missing_ok: bool = False, **kwargs: Any) -> Any:
        """One S3 call; anything but success becomes one line naming the storage (no secrets in it):
        a TransientError when the bucket did not answer or was overloaded (a later try may pass),
        else a TraitflowError. With `missing_ok`, "no such key" returns None."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import (
            BotoCoreError,
            ClientError,
            ConnectionError,
            HTTPClientError,
            NoCredentialsError,
            ResponseStreamingError,
        )

        try:
            return fn(*args, **kwargs)
        except Boto3Error as exc:  # the transfer manager's: an upload's ClientError inside, or retries exhausted
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, ClientError | BotoCoreError):
                return self._call(what, _reraise, cause, missing_ok=missing_ok)
            raise TransientError(f"storage {self.uri}: cannot {what}: {exc}") from None
        except NoCredentialsError:
            raise TraitflowError(f"storage {self.uri}: no S3 credentials; set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                                 "(or AWS_PROFILE) in the environment") from None
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = error.get("Code", "?")
            status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
            if missing_ok and code in ("404", "NoSuchKey", "NotFound"):
                return None
            if code in ("NoSuchBucket",):
                raise TraitflowError(f"storage {self.uri}: bucket {self.bucket!r} does not exist") from None
            if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "Forbidden"):
                raise TraitflowError(f"storage {self.uri}: access denied while trying to {what} ({code}); check the credentials "
                                     "in the environment") from None
            message = f"storage {self.uri}: cannot {what}: {code} {error.get('Message', '')}".rstrip()
            overloaded = code in SERVER_SIDE or status.startswith("5") or status == "429"
            raise (TransientError if overloaded else TraitflowError)(message) from None
        except (ConnectionError, HTTPClientError, ResponseStreamingError) as exc:  # no answer, timed out, cut off
            endpoint = s3_client(self.endpoint_url, self.region, self.checksums).meta.endpoint_url
            raise TransientError(f"storage {self.uri}: cannot {what} at {endpoint}: {exc}") from None
        except BotoCoreError as exc:  # a setting boto3 refuses (region, profile, parameters): the user's to fix
            raise TraitflowError(f"storage {self.uri}: cannot {what}: {exc}") from None

    def _etag(self, path: Path) -> str | None:
        """The object's ETag, or None when there is no such object."""
        head = self._call(f"read {self.key(path)}", self.client.head_object, Bucket=self.bucket, Key=self.key(path),
                          missing_ok=True)
        return None if head is None else head["ETag"]

    def fetch(self, path: Path) -> bool:
        """Make the mirror's copy of `path` current; False when the bucket has no such object."""
        path = Path(path)
        etag = self._etag(path)
        marker = _etag_path(path)
        if etag is None:
            path.unlink(missing_ok=True)
            marker.unlink(missing_ok=True)
            return False
        if path.exists() and marker.exists() and marker.read_text() == etag:
            return True
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            self._call(f"download {self.key(path)}", self.client.download_file, self.bucket, self.key(path), tmp)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        marker.write_text(etag)
        return True

    def publish(self, path: Path) -> None:
        """Upload the mirror's `path` (already complete there) as its object."""
        path = Path(path)
        self._call(f"upload {self.key(path)}", self.client.upload_file, str(path), self.bucket, self.key(path))
        etag = self._etag(path)
        if etag is not None:
            _etag_path(path).write_text(etag)

    # ------------------------------------------------------------------ the ArtifactStore interface
    def exists(self, path: Path) -> bool:
        return self._etag(Path(path)) is not None

    def write_bytes(self, path: Path, data: bytes) -> str:
        super().write_bytes(path, data)
        self.publish(path)
        return self.location(path)

    def read_bytes(self, path: Path) -> bytes:
        if not self.fetch(path):
            raise TraitflowError(f"{self.location(path)}: artifact missing; materialize its upstream asset first")
        return super().read_bytes(path)

    def read_tensors(self, path: Path) -> tuple[dict, dict[str, Any]]:
        if not self.fetch(path):
            raise TraitflowError(f"{self.location(path)}: artifact missing; materialize its upstream asset first")
        return super().read_tensors(path)

    def append_text(self, path: Path, text: str) -> None:
        self.fetch(path)  # another machine may have appended since
        super().append_text(path, text)
        self.publish(path)

    def read_text_optional(self, path: Path) -> str | None:
        return super().read_text_optional(path) if self.fetch(path) else None
