"""Losses and optimizers against hand-computed values, finite differences and torch."""

import numpy as np
import pytest
from _helpers import numerical_gradient

from convkit import nn

# ---------------------------------------------------------------- losses

def test_softmax_cross_entropy_hand_values():
    logits = np.array([[1.0, 2.0, 3.0], [1.0, 1.0, 1.0]])
    labels = np.array([2, 0])
    loss, grad = nn.SoftmaxCrossEntropy().value_and_grad(logits, labels)
    # Row 0: log(1 + e^-1 + e^-2) = 0.4076059644; row 1: log 3 = 1.0986122887.
    assert loss == pytest.approx((0.4076059644443804 + 1.0986122886681098) / 2, rel=1e-14)
    # softmax([1, 2, 3]) = [0.0900305732, 0.2447284711, 0.6652409558]; minus one-hot; / N.
    expected = np.array([[0.09003057317038046, 0.24472847105479767, 0.6652409557748219 - 1],
                         [1 / 3 - 1, 1 / 3, 1 / 3]]) / 2
    np.testing.assert_allclose(grad, expected, rtol=1e-14, atol=1e-16)
    assert nn.SoftmaxCrossEntropy()(logits, labels) == loss


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[1000.0, 0.0], [0.0, -1000.0]], dtype=np.float32)
    loss, grad = nn.SoftmaxCrossEntropy().value_and_grad(logits, np.array([1, 1]))
    assert loss == pytest.approx(1000.0)
    assert np.all(np.isfinite(grad))
    assert grad.dtype == np.float32
    np.testing.assert_allclose(grad, [[0.5, -0.5], [0.5, -0.5]])


def test_softmax_cross_entropy_gradient_matches_finite_differences():
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    loss_fn = nn.SoftmaxCrossEntropy()
    _, grad = loss_fn.value_and_grad(logits, labels)
    np.testing.assert_allclose(grad, numerical_gradient(lambda z: loss_fn(z, labels), logits),
                               rtol=1e-7, atol=1e-10)


def test_mean_squared_error_hand_values():
    pred = np.array([[1.0, 2.0], [3.0, 4.0]])
    target = np.array([[0.0, 2.0], [5.0, 4.0]])
    loss, grad = nn.MeanSquaredError().value_and_grad(pred, target)
    assert loss == (1 + 4) / 4
    np.testing.assert_array_equal(grad, [[0.5, 0.0], [-1.0, 0.0]])


def test_mean_squared_error_gradient_matches_finite_differences():
    rng = np.random.default_rng(1)
    pred, target = rng.standard_normal((3, 2, 2)), rng.standard_normal((3, 2, 2))
    loss_fn = nn.MeanSquaredError()
    _, grad = loss_fn.value_and_grad(pred, target)
    np.testing.assert_allclose(grad, numerical_gradient(lambda p: loss_fn(p, target), pred),
                               rtol=1e-7, atol=1e-10)


def test_accuracy_counts():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    assert nn.SoftmaxCrossEntropy().correct(logits, np.array([1, 1, 1])) == 2
    assert nn.MeanSquaredError().correct(logits, logits) is None


@pytest.mark.parametrize("labels, error, match", [
    (np.array([0, 3]), ValueError, r"\[0, 3\)"),
    (np.array([-1, 0]), ValueError, r"\[0, 3\)"),
    (np.array([0.0, 1.0]), TypeError, "integers"),
    (np.array([[0], [1]]), ValueError, "1-D"),
    (np.array([0, 1, 2]), ValueError, "2 rows but labels have 3"),
])
def test_softmax_cross_entropy_rejects_bad_labels(labels, error, match):
    with pytest.raises(error, match=match):
        nn.SoftmaxCrossEntropy().value_and_grad(np.zeros((2, 3)), labels)


def test_losses_reject_bad_predictions():
    with pytest.raises(ValueError, match="2-D"):
        nn.SoftmaxCrossEntropy().value_and_grad(np.zeros((2, 3, 1)), np.array([0, 1]))
    with pytest.raises(TypeError, match="float"):
        nn.SoftmaxCrossEntropy().value_and_grad(np.zeros((2, 3), dtype=int), np.array([0, 1]))
    with pytest.raises(ValueError, match="per-sample shape"):
        nn.MeanSquaredError().value_and_grad(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="empty"):
        nn.MeanSquaredError().value_and_grad(np.zeros((0, 3)), np.zeros((0, 3)))


# ---------------------------------------------------------------- optimizers

def _steps(optimizer, grads, start=1.0):
    param = np.array([start])
    values = []
    for g in grads:
        optimizer.step([param], [np.array([g])])
        values.append(float(param[0]))
    return values


def test_sgd_hand_values():
    # p = 1, g = 0.5, lr = 0.1: p -= 0.1 * 0.5.
    assert _steps(nn.SGD(0.1), [0.5, 0.5]) == pytest.approx([0.95, 0.9], rel=1e-15)
    # momentum 0.9: v1 = 0.5 -> 0.95; v2 = 0.9 * 0.5 + 0.5 = 0.95 -> 0.95 - 0.095 = 0.855.
    assert _steps(nn.SGD(0.1, momentum=0.9), [0.5, 0.5]) == pytest.approx([0.95, 0.855],
                                                                         rel=1e-15)
    # Nesterov: step = g + 0.9 v: 0.5 + 0.45 = 0.95 -> 0.905; 0.5 + 0.855 = 1.355 -> 0.7695.
    assert _steps(nn.SGD(0.1, momentum=0.9, nesterov=True), [0.5, 0.5]) == pytest.approx(
        [0.905, 0.7695], rel=1e-15)
    # weight decay 0.1: g' = 0.5 + 0.1 * 1 = 0.6 -> 0.94.
    assert _steps(nn.SGD(0.1, weight_decay=0.1), [0.5]) == pytest.approx([0.94], rel=1e-15)


def test_adam_hand_values():
    # Step 1, g = 0.5: m = 0.05, v = 0.00025; m / 0.1 = 0.5, sqrt(v / 0.001) = 0.5
    # -> p = 1 - 0.1 * 0.5 / (0.5 + 1e-8) = 0.900000002.
    # Step 2, g = -0.25: m = 0.045 - 0.025 = 0.02, v = 0.00024975 + 0.0000625 = 0.00031225;
    # m / (1 - 0.81) = 0.1052631579, sqrt(v / (1 - 0.998001)) = 0.3952253807
    # -> p = 0.900000002 - 0.1 * 0.1052631579 / (0.3952253807 + 1e-8) = 0.8733662987.
    values = _steps(nn.Adam(0.1), [0.5, -0.25])
    assert values == pytest.approx([0.900000002, 0.8733662987], rel=1e-10)


def test_adam_weight_decay_adds_l2_to_gradient():
    # g' = 0.4 + 0.2 * 1 = 0.6; the first Adam step moves by lr * g' / |g'| = lr.
    assert _steps(nn.Adam(0.01, weight_decay=0.2), [0.4]) == pytest.approx([0.99], rel=1e-7)


def test_optimizers_keep_float32_and_update_in_place():
    for optimizer in [nn.SGD(0.1, momentum=0.9), nn.Adam()]:
        param = np.ones((3, 2), dtype=np.float32)
        before = param
        optimizer.step([param], [np.full((3, 2), 0.5, dtype=np.float32)])
        assert param is before and param.dtype == np.float32
        assert np.all(param < 1)


@pytest.mark.parametrize("name", ["sgd", "nesterov", "adam"])
def test_optimizers_match_torch(name):
    torch = pytest.importorskip("torch", exc_type=ImportError)
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(6)]
    if name == "adam":
        ours = nn.Adam(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.01)
        make = lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                                          weight_decay=0.01)
    else:
        nesterov = name == "nesterov"
        ours = nn.SGD(0.05, momentum=0.9, nesterov=nesterov, weight_decay=0.01)
        make = lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=nesterov,
                                         weight_decay=0.01)
    param = start.copy()
    tensor = torch.tensor(start, requires_grad=True)
    optimizer = make([tensor])
    for g in grads:
        ours.step([param], [g])
        tensor.grad = torch.tensor(g)
        optimizer.step()
    np.testing.assert_allclose(param, tensor.detach().numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make, error, match", [
    (lambda: nn.SGD(-0.1), ValueError, "lr"),
    (lambda: nn.SGD(0.1, momentum=-1), ValueError, "momentum"),
    (lambda: nn.SGD(0.1, nesterov=True), ValueError, "nesterov"),
    (lambda: nn.Adam(betas=(0.9, 1.0)), ValueError, r"betas\[1\]"),
    (lambda: nn.Adam(betas=0.9), TypeError, "betas"),
    (lambda: nn.Adam(lr="fast"), TypeError, "lr"),
    (lambda: nn.Adam(eps=float("nan")), ValueError, "eps"),
])
def test_optimizer_arguments_are_checked(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_optimizer_step_checks_its_lists():
    optimizer = nn.Adam()
    with pytest.raises(ValueError, match="2 parameters but 1 gradients"):
        optimizer.step([np.zeros(2), np.zeros(3)], [np.zeros(2)])
    with pytest.raises(ValueError, match="shape"):
        optimizer.step([np.zeros(2)], [np.zeros(3)])
    optimizer.step([np.zeros(2)], [np.ones(2)])
    with pytest.raises(ValueError, match="different list of parameters"):
        optimizer.step([np.zeros(4)], [np.ones(4)])
    optimizer.reset()
    optimizer.step([np.zeros(4)], [np.ones(4)])
    assert optimizer.iterations == 1


def test_linear_decay_schedule():
    schedule = nn.LinearDecay(0.1, steps=4, final=0.02)
    assert [schedule(step) for step in range(6)] == pytest.approx(
        [0.1, 0.08, 0.06, 0.04, 0.02, 0.02], rel=1e-15)
    # lr 0.1, 0.05, then 0: p = 1 - 0.1 * 0.5 = 0.95, - 0.05 * 0.5 = 0.925, unchanged.
    optimizer = nn.SGD(nn.LinearDecay(0.1, steps=2))
    assert _steps(optimizer, [0.5, 0.5, 0.5]) == pytest.approx([0.95, 0.925, 0.925], rel=1e-15)
    with pytest.raises(ValueError, match="steps"):
        nn.LinearDecay(0.1, steps=0)
    with pytest.raises(ValueError, match="lr"):
        nn.Adam(lambda step: -1.0).step([np.zeros(1)], [np.ones(1)])
