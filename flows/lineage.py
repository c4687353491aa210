"""What a model version is made of: data hash, code version, parameters, and their fingerprint.

The fingerprint is the idempotency key: a pipeline run whose fingerprint is already registered
registers nothing new.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

from gpt_observatory.flows.model.training import TrainParams

# The modules of the model package whose source decides the trained weights and how they are served.
CODE_PACKAGE = "gpt_observatory.flows.model"
CODE_MODULES = ("gpt.py", "training.py", "pyfunc.py")


def code_version() -> str:
    """A content hash of the model, training and serving code (independent of git)."""
    digest = hashlib.sha256()
    package = resources.files(CODE_PACKAGE)
    for name in CODE_MODULES:
        digest.update(name.encode())
        digest.update((package / name).read_bytes())
    return "sha256:" + digest.hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Lineage:
    data_hash: str
    code_version: str
    params: TrainParams

    @property
    def fingerprint(self) -> str:
        payload = json.dumps(
            {"data": self.data_hash, "code": self.code_version, "params": self.params.as_dict()}, sort_keys=True
        )
        return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()[:32]

    def params_json(self) -> str:
        return json.dumps(self.params.as_dict(), sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        return {"data_hash": self.data_hash, "code_version": self.code_version, "params": self.params.as_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        return cls(data_hash=data["data_hash"], code_version=data["code_version"], params=TrainParams(**data["params"]))
