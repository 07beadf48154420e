"""The learning-rate schedules `train` compiles: warm-up, then cosine decay or constant."""

import keras
import pytest

from alexnet_k3.config import TrainConfig
from alexnet_k3.training import compile_model


def _learning_rates(config: TrainConfig, steps_per_epoch: int, epochs: int) -> list[float]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(10)])
    compile_model(model, config, num_classes=10, steps_per_epoch=steps_per_epoch, epochs=epochs)
    schedule = keras.optimizers.schedules.deserialize(model.optimizer.get_config()["learning_rate"])
    total = steps_per_epoch * epochs
    return [float(schedule(step)) for step in range(total + 1)]


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_warm_up_reaches_the_peak_then_the_schedule_takes_over(schedule):
    config = TrainConfig(learning_rate=0.1, warmup_epochs=1, schedule=schedule)
    rates = _learning_rates(config, steps_per_epoch=4, epochs=3)
    assert rates[0] == pytest.approx(0.0)
    assert rates[2] == pytest.approx(0.05)  # halfway through the warm-up
    assert rates[4] == pytest.approx(0.1)
    if schedule == "constant":
        assert rates[4:] == pytest.approx([0.1] * 9)
    else:
        assert rates[8] == pytest.approx(0.05)  # halfway through the cosine
        assert rates[-1] == pytest.approx(0.0, abs=1e-7)


def test_without_warm_up_a_constant_schedule_is_the_plain_loops_fixed_rate():
    config = TrainConfig(learning_rate=0.02, warmup_epochs=0, schedule="constant")
    assert _learning_rates(config, steps_per_epoch=3, epochs=2) == pytest.approx([0.02] * 7)
