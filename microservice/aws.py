"""AWS clients, created lazily and injectable.

boto3 honours `AWS_ENDPOINT_URL` by itself, so the same code talks to AWS, the
local emulator and moto. Tests pass their own clients to `AwsClients`.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

import boto3
from botocore.config import Config

from microprocess.ledger import Ledger

#: Per-service client configuration. Presigned report links must be SigV4 (SigV2 links are
#: refused for KMS-encrypted objects and in newer regions).
_CLIENT_CONFIG: dict[str, Config] = {"s3": Config(signature_version="s3v4")}


class AwsClients:
    """The service's boto3 clients, the ledger and the signing secret, each made on first use.

    Args:
        dynamodb, s3, ses, secretsmanager: ready clients (tests); created lazily when omitted.
    """

    def __init__(self, *, dynamodb: Any = None, s3: Any = None, ses: Any = None, secretsmanager: Any = None) -> None:
        self._clients: dict[str, Any] = {
            name: client
            for name, client in (("dynamodb", dynamodb), ("s3", s3), ("ses", ses), ("secretsmanager", secretsmanager))
            if client is not None
        }
        self._ledgers: dict[str, Ledger] = {}
        self._secrets: dict[str, str] = {}
        self._lock = threading.Lock()

    def _client(self, service: str) -> Any:
        with self._lock:  # boto3's default session is not thread-safe when creating clients
            if service not in self._clients:
                self._clients[service] = boto3.client(service, config=_CLIENT_CONFIG.get(service))
            return self._clients[service]

    @property
    def dynamodb(self) -> Any:
        return self._client("dynamodb")

    @property
    def s3(self) -> Any:
        return self._client("s3")

    @property
    def ses(self) -> Any:
        return self._client("ses")

    @property
    def secretsmanager(self) -> Any:
        return self._client("secretsmanager")

    def ledger(self, table_name: str) -> Ledger:
        """One `Ledger` per table for the life of the process."""
        client = self.dynamodb
        with self._lock:
            if table_name not in self._ledgers:
                self._ledgers[table_name] = Ledger(table_name, client=client, max_workers=1)
            return self._ledgers[table_name]

    def secret_string(self, secret_id: str) -> str:
        """The secret's `SecretString`, read from Secrets Manager once and then cached."""
        with self._lock:
            if secret_id in self._secrets:
                return self._secrets[secret_id]
        value = self.secretsmanager.get_secret_value(SecretId=secret_id)["SecretString"]
        with self._lock:
            self._secrets[secret_id] = value
        return value


@lru_cache(maxsize=1)
def get_aws() -> AwsClients:
    """The process-wide clients (a FastAPI dependency)."""
    return AwsClients()
