"""The Flower ClientApp of §2.3: each client obfuscates its own share with SL-p and trains N on it.

A train message carries N's parameters (``arrays``), SL-p's parameters (``layer``) and a config
record (the run's config as JSON, the share ``p``, the stage, the round and whether to screen). The
reply carries N's trained parameters (``arrays``) and scalar metrics (``metrics``, with
``num-examples``): no sample, obfuscated or not, ever leaves the client.

Deployment (``flwr run``): ``clientapp = "scl.pipelines.federated.client_app:app"``; the client
index comes from the node config key ``partition-id``.
"""

from __future__ import annotations

import json
from typing import cast

import torch  # noqa: F401  (before Flower: ArrayRecord.to_torch_state_dict needs torch imported)
from flwr.app import ArrayRecord, Context, Message, MetricRecord, MetricRecordValues, RecordDict
from flwr.clientapp import ClientApp

from scl.pipelines import engine
from scl.pipelines.federated import task

app = ClientApp()


def round_info(record: object) -> task.RoundInfo:
    """The :class:`~.task.RoundInfo` of a train message's config record."""
    return task.RoundInfo(
        p=float(record["p"]),  # type: ignore[index]
        stage=int(record["stage"]),  # type: ignore[index]
        round=int(record["round"]),  # type: ignore[index]
        screening=bool(record["screening"]),  # type: ignore[index]
    )


def reply_content(update: task.Update) -> RecordDict:
    """The reply: N's parameters and scalar metrics, weighted by ``num-examples``."""
    metrics: dict[str, MetricRecordValues] = {k: float(v) for k, v in update.metrics.items()}
    metrics["num-examples"] = int(update.num_examples)
    return RecordDict({"arrays": ArrayRecord(update.arrays), "metrics": MetricRecord(metrics)})


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Steps 3 and 4 of §2.3 on this client (:func:`~.task.client_update`)."""
    record = msg.content["config"]
    config = task.FederatedConfig.from_dict(json.loads(str(record["scl-config"])))
    client = int(context.node_config["partition-id"])
    # one intra-op thread per simulated client (the clients already run side by side), for this
    # message only: a deployment's SuperNode process keeps its own setting
    with engine.threads(1):
        update = task.client_update(
            config,
            cast(ArrayRecord, msg.content["arrays"]).to_torch_state_dict(),
            cast(ArrayRecord, msg.content["layer"]).to_torch_state_dict(),
            client=client,
            info=round_info(record),
        )
    return Message(reply_content(update), reply_to=msg)
