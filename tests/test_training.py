"""scl's one training loop (scl.training): batches, history, and the best epoch kept."""

from __future__ import annotations

import torch
from torch import nn

from scl import training
from scl.pipelines import engine


def test_shuffled_batches_visit_every_index_once_and_drop_a_short_tail():
    # prepare
    index = torch.arange(10, 21)  # 11 indices: batches of 4, 4, 3
    # execute
    batches = list(training.shuffled_batches(index, 4, torch.Generator().manual_seed(0)))
    short = list(training.shuffled_batches(index, 5, torch.Generator().manual_seed(0), min_batch=2))
    again = list(training.shuffled_batches(index, 4, torch.Generator().manual_seed(0)))
    # assert
    assert [b.numel() for b in batches] == [4, 4, 3]
    assert sorted(torch.cat(batches).tolist()) == index.tolist()
    assert [b.numel() for b in short] == [5, 5]  # the tail of 1 is dropped
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded: the same order


def test_fit_learns_and_reports_weighted_epoch_means():
    # prepare: y = 3x - 1, 50 samples in batches of 16 (16, 16, 16, 2)
    torch.manual_seed(0)
    x = torch.rand(50, 1)
    y = 3 * x - 1
    model = nn.Linear(1, 1)
    seen: list[int] = []

    def step(index):
        seen.append(index.numel())
        loss = ((model(x[index]) - y[index]) ** 2).mean()
        return loss, {"size": float(index.numel())}

    # execute
    result = training.fit(step, model.parameters(), 50, epochs=60, lr=0.05, batch_size=16,
                          generator=torch.Generator().manual_seed(1), modules=(model,))
    # assert
    assert result.epochs == 60 and len(result.history["loss"]) == 60
    assert result.history["loss"][-1] < 0.01 * result.history["loss"][0]
    # each epoch's mean is weighted by batch size: (3 * 16 * 16 + 2 * 2) / 50
    assert abs(result.history["size"][0] - (3 * 16 * 16 + 2 * 2) / 50) < 1e-9
    assert seen[:4] == [16, 16, 16, 2]
    assert not model.training  # left in eval mode


def test_fit_restores_the_epoch_with_the_lowest_validation_loss():
    # prepare: a validation loss scripted per epoch; the weights move every epoch
    model = nn.Linear(2, 1)
    scripted = iter([3.0, 1.0, 2.0, 5.0])
    weights: list[torch.Tensor] = []

    def validate():
        weights.append(model.weight.detach().clone())
        return next(scripted)

    def step(index):
        return model(torch.ones(index.numel(), 2)).sum(), {}

    # execute
    result = training.fit(step, model.parameters(), 4, epochs=4, lr=0.1, batch_size=2, modules=(model,),
                          validate=validate)
    # assert
    assert result.epochs == 2
    assert result.history["validation"] == [3.0, 1.0, 2.0, 5.0]
    assert torch.equal(model.weight, weights[1]) and not torch.equal(weights[1], weights[3])


def test_fit_stops_once_the_smoothed_validation_loss_stalls():
    # prepare: a loss that only rises after epoch 1; patience 2, and never before a third of 30 epochs
    model = nn.Linear(1, 1)
    epochs_run = []

    def validate():
        epochs_run.append(len(epochs_run) + 1)
        return float(len(epochs_run))

    # execute
    result = training.fit(lambda i: (model(torch.ones(i.numel(), 1)).sum(), {}), model.parameters(), 4, epochs=30,
                          lr=0.1, batch_size=2, modules=(model,), validate=validate, patience=2)
    # assert: stale from epoch 2 on, stopped at epoch 10 (a third of 30), best epoch 1 kept
    assert len(epochs_run) == 10 and result.epochs == 1


def test_engine_train_feeds_tuples_of_tensors_to_the_same_loop():
    torch.manual_seed(0)
    x, y = torch.rand(40, 3), torch.rand(40, 1)
    model = nn.Linear(3, 1)

    def loss_fn(xb, yb):
        loss = ((model(xb) - yb) ** 2).mean()
        return loss, {"mse": float(loss.detach())}

    history = engine.train(loss_fn, list(model.parameters()), (x, y), epochs=3, lr=0.01, batch_size=8,
                           generator=torch.Generator().manual_seed(0))
    assert set(history) == {"loss", "mse"} and len(history["loss"]) == 3
    assert abs(history["loss"][0] - history["mse"][0]) < 1e-6
