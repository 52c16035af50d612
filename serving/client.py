"""A small Recall client (what `xdm recall USER` uses); TLS and token as serving's config says."""

from __future__ import annotations

from xdm.config import ServingConfig
from xdm.recall_channel import recall_channel
from xdm.v1 import recall_pb2, recall_pb2_grpc


def recall(serving: ServingConfig, address: str, user_id: str, k: int = 10, arm: str = "", request_id: str = "",
           exclude_clicked: bool = False, timeout_s: float = 5.0) -> recall_pb2.RecallResponse:
    with recall_channel(serving, address) as channel:
        stub = recall_pb2_grpc.RecallStub(channel)
        return stub.Recall(recall_pb2.RecallRequest(user_id=user_id, k=k, arm=arm, request_id=request_id,
                                                    exclude_clicked=exclude_clicked), timeout=timeout_s)
