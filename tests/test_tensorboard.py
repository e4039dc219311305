"""TensorBoard beyond scalars, read back with tensorboard's EventAccumulator: the model graph, the
resolved spec, weight and gradient histograms (`log_histograms:`), hparams with the best
checkpoint's metrics, test-split scalars, the confusion matrix image, and each split's scalars in a
sub-run of its own under the same lower-case tag, so TensorBoard overlays train and val in one chart."""
from __future__ import annotations

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from specc.lang.errors import SpecError
from specc.train.tensorboard import histograms_due, split_tag
from specc.train.training import train

PARAMETERS = ["0.weight", "0.bias", "head.weight", "head.bias"]


def iris_spec(**train_keys) -> dict:
    return {"name": "iris_tb", "vars": {"hidden": 8},
            "inputs": {"measurements": {"shape": [4]}},
            "layers": [{"Linear": {"out_features": "$hidden"}}, "ReLU", {"Linear": {"out_features": 3}, "name": "head"}],
            "train": {"data": {"source": "sklearn:iris", "split": {"val": 0.2, "test": 0.2, "seed": 0}},
                      "batch_size": 32, "epochs": 3, "loss": "CrossEntropyLoss", "metrics": ["accuracy"],
                      "optimizer": {"Adam": {"lr": 0.01}}, "threads": 1, **train_keys}}


@pytest.fixture(scope="module")
def events(tmp_path_factory):
    result = train(iris_spec(log_histograms=True), out=tmp_path_factory.mktemp("runs"), verbose=False)
    assert result.ok
    accumulator = EventAccumulator(str(result.run_dir), size_guidance={"histograms": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator, result


def split_run(run_dir, split) -> EventAccumulator:
    accumulator = EventAccumulator(str(run_dir / "tensorboard" / split))
    accumulator.Reload()
    return accumulator


def test_splits_are_sub_runs_sharing_one_tag_per_quantity(events):
    accumulator, result = events
    for split in ("train", "val"):
        run = split_run(result.run_dir, split)
        assert set(run.Tags()["scalars"]) == {"loss", "accuracy"}
        for quantity in ("loss", "accuracy"):
            assert [(event.step, event.value) for event in run.Scalars(quantity)] == [
                (record["epoch"], pytest.approx(record[f"{split}_{quantity}"])) for record in result.history]
    own = set(accumulator.Tags()["scalars"])
    assert "lr" in own and not own & {"loss", "accuracy", "loss/train", "loss/val"}
    assert [event.value for event in accumulator.Scalars("lr")] == pytest.approx(
        [record["lr"] for record in result.history])
    assert split_tag("val_accuracy") == ("val", "accuracy") and split_tag("lr") == (None, "lr")
    assert split_tag("train_F1") == ("train", "f1") and split_tag("data_seconds") == (None, "data_seconds")


def test_test_split_metrics_are_the_best_checkpoints(events):
    accumulator, result = events
    [test_accuracy] = split_run(result.run_dir, "test").Scalars("accuracy")
    assert test_accuracy.value == pytest.approx(result.metrics["test"]["accuracy"])
    assert accumulator.Scalars("best/val_accuracy")[0].value == pytest.approx(result.metrics["val"]["accuracy"])


def test_histograms_of_every_parameter_and_gradient_every_epoch(events):
    accumulator, _ = events
    histograms = set(accumulator.Tags()["histograms"])
    assert histograms == {f"{kind}/{name}" for kind in ("weights", "gradients") for name in PARAMETERS}
    assert [event.step for event in accumulator.Histograms("weights/head.weight")] == [1, 2, 3]
    assert accumulator.Histograms("weights/head.weight")[-1].histogram_value.num == 3 * 8


def test_graph_and_spec_text(events):
    accumulator, _ = events
    assert accumulator.Tags()["graph"] is True
    graph = accumulator.Graph()
    assert any("Linear" in node.op or "linear" in node.op or "addmm" in node.op for node in graph.node)
    [spec_text] = accumulator.Tensors("spec/text_summary")
    text = spec_text.tensor_proto.string_val[0].decode()
    assert "    name: iris_tb" in text and "    train:" in text


def test_hparams_hold_vars_train_keys_and_final_metrics(events):
    accumulator, result = events
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    values = {name: value.WhichOneof("kind") and getattr(value, value.WhichOneof("kind"))
              for name, value in start.hparams.items()}
    assert values["vars.hidden"] == 8 and values["train.batch_size"] == 32 and values["train.epochs"] == 3
    assert values["train.optimizer.Adam.lr"] == pytest.approx(0.01) and values["train.loss"] == "CrossEntropyLoss"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} >= {"best/val_accuracy", "best/test_accuracy",
                                                                   "best/val_loss"}


def test_confusion_matrix_image_for_val_and_test(events):
    accumulator, _ = events
    images = set(accumulator.Tags()["images"])
    assert images == {"confusion_matrix/val", "confusion_matrix/test"}
    [image] = accumulator.Images("confusion_matrix/test")
    assert image.encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and image.width > 100


def test_one_events_file_per_run_and_sub_run(events):
    _, result = events
    assert len(list(result.run_dir.glob("events.out.tfevents.*"))) == 1
    assert sorted(path.name for path in (result.run_dir / "tensorboard").iterdir()) == ["test", "train", "val"]
    for split in ("train", "val", "test"):
        assert len(list((result.run_dir / "tensorboard" / split).glob("events.out.tfevents.*"))) == 1


def test_histograms_every_n_epochs(tmp_path):
    result = train(iris_spec(log_histograms=2, epochs=4), out=tmp_path, verbose=False)
    accumulator = EventAccumulator(str(result.run_dir), size_guidance={"histograms": 0})
    accumulator.Reload()
    assert [event.step for event in accumulator.Histograms("gradients/0.weight")] == [2, 4]
    assert histograms_due(False, 3) is False and histograms_due(True, 3) and histograms_due(3, 6)


def test_no_histograms_by_default_and_a_bad_setting_is_located(tmp_path):
    result = train(iris_spec(epochs=1), out=tmp_path, verbose=False)
    accumulator = EventAccumulator(str(result.run_dir))
    accumulator.Reload()
    assert accumulator.Tags()["histograms"] == []
    with pytest.raises(SpecError, match="log_histograms must be true, false or a number"):
        train(iris_spec(log_histograms=0), out=tmp_path, verbose=False)


def test_a_resumed_run_appends_to_the_same_sub_runs(tmp_path):
    first = train(iris_spec(epochs=2), out=tmp_path, verbose=False)
    resumed = train(iris_spec(epochs=3), resume=first.last_checkpoint, verbose=False)
    assert resumed.run_dir == first.run_dir
    for split in ("train", "val"):
        steps = [event.step for event in split_run(first.run_dir, split).Scalars("loss")]
        assert steps == [1, 2, 3]


def test_k_fold_sub_runs_live_in_each_fold(tmp_path):
    spec = iris_spec(epochs=1)
    spec["train"]["data"]["split"] = {"kfold": 2, "test": 0, "seed": 0}
    result = train(spec, out=tmp_path, verbose=False)
    for fold in ("fold_1", "fold_2"):
        assert [event.step for event in split_run(result.run_dir / fold, "val").Scalars("loss")] == [1]
