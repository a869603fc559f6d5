"""The tag map: defaults, name guesses with a note, overrides and their errors; histograms whose
norms must be estimated from bins."""

from __future__ import annotations

import numpy as np
import pytest

from tracemortem.config import Config, ConfigError
from tracemortem.load.tags import TagMap


def test_defaults_pick_the_training_tags():
    chosen = TagMap.from_options(None).choose(["val/loss", "Train/Loss", "train/learning_rate", "epoch", "grad_norm"])
    assert chosen.columns == {"loss": "Train/Loss", "lr": "train/learning_rate", "grad_norm": "grad_norm"}
    assert chosen.guessed == {}


def test_guess_skips_validation_and_epoch_tags_and_says_so():
    chosen = TagMap.from_options(None).choose(["val_loss", "loss_epoch", "my_loss", "my_total_loss", "lr-AdamW"])
    assert chosen.columns == {"loss": "my_loss", "lr": "lr-AdamW"}
    assert chosen.guessed == {"loss": "my_loss"}  # Lightning's LearningRateMonitor name is known, not guessed


def test_parameter_patterns():
    tags = TagMap.from_options({"tags": {"param_grad": "gradients/{name}/hist"}})
    assert tags.parameter("gradients/encoder.layer.0.weight/hist") == ("grad", "encoder.layer.0.weight")
    assert tags.parameter("grad/encoder.weight") is None  # a key's list replaces its defaults
    defaults = TagMap.from_options(None)
    assert defaults.parameter("fc1.weight.grad") == ("grad", "fc1.weight")
    assert defaults.parameter("grad_2.0_norm/net.0.bias") == ("grad", "net.0.bias")
    assert defaults.parameter("weights/fc1.weight") == ("weight", "fc1.weight")


@pytest.mark.parametrize(
    "tags",
    [{"loss": 3}, {"loss": []}, {"losss": "x"}, {"param_grad": "grad/"}, {"param_grad": "{name}/{name}"}],
)
def test_bad_overrides_are_config_errors(tags):
    with pytest.raises(ConfigError):
        TagMap.from_options(Config(options={"tags": tags}).options)


def test_histograms_without_sum_of_squares_are_estimated(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.util.tensor_util import make_tensor_proto
    from torch.utils.tensorboard import SummaryWriter

    from tracemortem import analyze

    values = np.array([-3.0, -1.0, 0.5, 0.5, 2.0])
    counts, edges = np.histogram(values, bins=4)
    with SummaryWriter(str(tmp_path)) as writer:
        for step in range(3):
            writer.add_scalar("loss", 1.0, step)
            # the old proto, written without its sum of squares
            writer.add_histogram_raw(
                "grad/a",
                values.min(),
                values.max(),
                len(values),
                values.sum(),
                0.0,
                edges[1:].tolist(),
                counts.tolist(),
                step,
            )
            # the tensor form TensorFlow 2 writes: (left edge, right edge, count) per bucket
            buckets = np.stack([edges[:-1], edges[1:], counts], axis=1)
            metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="histograms"))
            value = Summary.Value(tag="grad/b", tensor=make_tensor_proto(buckets), metadata=metadata)
            writer.file_writer.add_summary(Summary(value=[value]), step)
    analysis = analyze(tmp_path)
    grads = analysis.grads.collect()
    assert grads.height == 6
    exact = float(np.linalg.norm(values))
    for norm in grads["norm"].to_list():  # bin centres: close to, not equal to, the exact norm
        assert norm != pytest.approx(exact, rel=1e-6) and norm == pytest.approx(exact, rel=0.25)
    assert grads["absmax"].max() == pytest.approx(3.0)
    note = next(f for f in analysis.findings if f.title == "per-parameter norms approximated from histogram bins")
    assert note.evidence["histograms"] == 2
