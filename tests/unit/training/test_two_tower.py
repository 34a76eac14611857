from __future__ import annotations

import pytest
import torch

from training.models.two_tower import UserTower, in_batch_logq_loss


def _tower() -> UserTower:
    torch.manual_seed(0)
    return UserTower(id_buckets=50, n_age=3, n_country=3, n_language=3, text_dim=4,
                     emb_dim=8, hidden=16, out_dim=8, dropout=0.0).eval()


def _inputs(history: list[list[int]]) -> tuple[torch.Tensor, ...]:
    n = len(history)
    z = torch.zeros(n, dtype=torch.long)
    return (torch.ones(n, dtype=torch.long), z, z, z, torch.zeros(n, 4),
            torch.tensor(history, dtype=torch.long))


def test_padding_does_not_change_the_pooled_history() -> None:
    t = _tower()
    a = t(*_inputs([[0, 0, 7, 9]]))
    b = t(*_inputs([[0, 7, 0, 9]]))
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, t(*_inputs([[0, 0, 7, 11]])))


def test_exclude_masks_the_target_out_of_its_own_history() -> None:
    t = _tower()
    with_target = t(*_inputs([[3, 7, 9]]), torch.tensor([9]))
    without = t(*_inputs([[0, 3, 7]]))
    torch.testing.assert_close(with_target, without)


def test_scripted_tower_matches_eager() -> None:
    t = _tower()
    scripted = torch.jit.script(t)
    x = _inputs([[1, 2, 3], [0, 0, 4]])
    torch.testing.assert_close(scripted(*x), t(*x))


def test_logq_loss_is_softmax_over_corrected_logits() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    v = torch.tensor([[0.6, 0.8], [0.0, 1.0]])
    log_q = torch.tensor([-0.5, -2.0])
    loss = in_batch_logq_loss(u, v, log_q, temperature=0.5)
    # user 0: logits [1.2+0.5, 0+2.0] -> target 0; user 1: [1.6+0.5, 2.0+2.0] -> target 1
    l0 = -torch.log_softmax(torch.tensor([1.7, 2.0]), 0)[0]
    l1 = -torch.log_softmax(torch.tensor([2.1, 4.0]), 0)[1]
    assert float(loss) == pytest.approx(float((l0 + l1) / 2), rel=1e-6)
    # a constant shift of log q changes nothing; masking a duplicate item does
    assert float(in_batch_logq_loss(u, v, log_q - 3.0, temperature=0.5)) == \
        pytest.approx(float(loss), rel=1e-6)
    dup = in_batch_logq_loss(u, v, log_q, temperature=0.5, item_ids=torch.tensor([4, 4]))
    assert float(dup) == pytest.approx(0.0, abs=1e-6)
