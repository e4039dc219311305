"""Training data: sources, reshaping to the spec's inputs, splits, normalization, batching."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from specc.train.data import Normalizer, TensorData, batches, make_splits
from specc.lang.errors import SpecError
from specc.train.loop import count_steps
from specc.train.prepare import build_model, load_train_spec, prepare_data

torch.set_num_threads(1)  # two pytest workers share two cores


def prepared(spec_text: str, tmp_path: Path | None = None):
    """Load a spec (written to tmp_path when given, so relative data paths resolve) and read its data."""
    text = textwrap.dedent(spec_text)
    if tmp_path is not None:
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        text = path
    spec = load_train_spec(text)
    return spec, prepare_data(spec, build_model(spec, torch.device("cpu"), seed=0))


DIGITS_CNN = """
    name: digits
    inputs: {image: {shape: [1, 8, 8]}}
    layers: [Conv2d: {out_channels: 4, kernel_size: 3}, Flatten, Linear: {out_features: 10}]
    train:
      data: {source: "sklearn:digits", split: {val: 0.2, test: 0.1, seed: 3}}
      loss: CrossEntropyLoss
"""


def test_digits_features_are_reshaped_to_the_image_input():
    _, data = prepared(DIGITS_CNN)
    examples = data.examples.data
    assert examples.inputs[0].shape == (1797, 1, 8, 8) and examples.inputs[0].dtype == torch.float32
    assert examples.target.shape == (1797,) and examples.target.dtype == torch.long
    assert data.task.kind == "multiclass" and data.task.num_classes == 10


def test_an_element_count_mismatch_names_both_shapes_at_the_source_line():
    with pytest.raises(SpecError) as error:
        prepared(DIGITS_CNN.replace("[1, 8, 8]", "[1, 7, 7]"))
    problem = error.value.first
    assert problem.code == "DATA_ERROR"
    assert "[1, 7, 7] (49 values per example)" in problem.message and "[64] (64 values)" in problem.message
    assert (problem.location.line, problem.location.column) == (6, 10)  # the `source:` key


def test_targets_beyond_the_model_classes_are_a_data_error():
    with pytest.raises(SpecError, match="classes 0..9 but the model outputs 5"):
        prepared(DIGITS_CNN.replace("out_features: 10", "out_features: 5"))


def test_holdout_split_is_disjoint_stratified_and_seeded():
    _, data = prepared(DIGITS_CNN)
    (split,) = data.splits
    sizes = {name: len(part) for name, part in split.named().items()}
    assert sizes == {"train": 1257, "val": 360, "test": 180}
    seen = torch.cat([part.inputs[0].flatten(1) for part in split.named().values()])
    assert torch.unique(seen, dim=0).shape[0] == torch.unique(data.examples.data.inputs[0].flatten(1), dim=0).shape[0]
    full = np.bincount(data.examples.data.target.numpy()) / 1797
    val = np.bincount(split.val.target.numpy(), minlength=10) / 360
    assert np.abs(full - val).max() < 0.01  # stratified: same class proportions
    _, again = prepared(DIGITS_CNN)
    assert torch.equal(again.splits[0].val.target, split.val.target)


def test_kfold_validation_sets_partition_the_non_test_examples():
    _, data = prepared(DIGITS_CNN.replace("{val: 0.2, test: 0.1, seed: 3}", "{kfold: 4, test: 0.1}"))
    assert len(data.splits) == 4
    assert [split.fold for split in data.splits] == [0, 1, 2, 3]
    assert sum(len(split.val) for split in data.splits) == 1797 - 180
    assert all(len(split.train) + len(split.val) == 1797 - 180 for split in data.splits)
    assert all(torch.equal(split.test.target, data.splits[0].test.target) for split in data.splits)


def test_kfold_with_val_is_a_located_error():
    with pytest.raises(SpecError, match="each fold in turn is the validation set"):
        prepared(DIGITS_CNN.replace("{val: 0.2, test: 0.1, seed: 3}", "{kfold: 4, val: 0.1}"))


def test_standard_normalizer_is_fitted_on_the_training_split_only():
    train = TensorData((torch.tensor([[0.0, 5.0], [2.0, 5.0]]),), torch.zeros(2))
    val = TensorData((torch.tensor([[4.0, 7.0]]),), torch.zeros(1))
    normalizer = Normalizer.fit("standard", train)
    assert torch.allclose(normalizer(train).inputs[0], torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(normalizer(val).inputs[0], torch.tensor([[3.0, 2.0]]))  # constant column: scale 1
    minmax = Normalizer.fit("minmax", train)
    assert torch.allclose(minmax(val).inputs[0], torch.tensor([[2.0, 2.0]]))
    restored = Normalizer.from_state_dict(normalizer.state_dict())
    assert torch.equal(restored(val).inputs[0], normalizer(val).inputs[0])


def test_token_inputs_are_not_normalized():
    tokens = TensorData((torch.arange(6).reshape(3, 2),), torch.zeros(3))
    assert torch.equal(Normalizer.fit("standard", tokens)(tokens).inputs[0], tokens.inputs[0])


def test_batches_cover_every_example_once_and_shard_by_rank():
    data = TensorData((torch.arange(10).float().unsqueeze(1),), torch.arange(10))
    generator = torch.Generator().manual_seed(0)
    order = torch.cat([target for _, target in batches(data, 3, generator=generator)])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    dropped = [len(target) for _, target in batches(data, 3, generator=generator, drop_single=True)]
    assert dropped == [3, 3, 3] == [3] * count_steps(10, 3)  # the lone 10th example is skipped
    ranks = [torch.cat([t for _, t in batches(data, 2, generator=torch.Generator().manual_seed(1), rank=rank,
                                              world_size=2)]) for rank in (0, 1)]
    assert sorted(torch.cat(ranks).tolist()) == list(range(10)) and not set(ranks[0].tolist()) & set(ranks[1].tolist())
    in_order = [target.tolist() for _, target in batches(data, 4)]
    assert in_order == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_csv_source_with_a_named_text_target(tmp_path):
    rows = ["width,colour,height,kind"] + [f"{i % 7},{i % 3},{i % 5},{'ab'[i % 2]}" for i in range(40)]
    (tmp_path / "table.csv").write_text("\n".join(rows) + "\n")
    spec, data = prepared("""
        inputs: {x: {shape: [3]}}
        layers: [Linear: {out_features: 2}]
        train:
          data: {source: "csv:table.csv", target: kind, split: {val: 0.25, test: 0}}
          loss: CrossEntropyLoss
    """, tmp_path)
    assert data.examples.classes == ["a", "b"]
    assert data.examples.data.inputs[0][3].tolist() == [3.0, 0.0, 3.0]
    assert data.examples.data.target[:4].tolist() == [0, 1, 0, 1]


def test_csv_with_a_non_number_names_file_line_and_column(tmp_path):
    (tmp_path / "bad.csv").write_text("a,b,y\n1,2,0\n3,oops,1\n")
    with pytest.raises(SpecError, match=r"bad.csv:3: column 'b' is not a number: 'oops'"):
        prepared("""
            inputs: {x: {shape: [2]}}
            layers: [Linear: {out_features: 2}]
            train: {data: {source: "csv:bad.csv"}, loss: CrossEntropyLoss}
        """, tmp_path)


def test_npz_source_with_one_array_per_input(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "pair.npz", left=rng.normal(size=(30, 4)), right=rng.normal(size=(30, 2)),
             y=rng.normal(size=30))
    _, data = prepared("""
        inputs: {left: {shape: [2, 2]}, right: {shape: [2]}}
        layers:
          - Flatten: {}
            from: left
          - cat: {dim: 1}
            from: [0, right]
          - Linear: {out_features: 1}
        train: {data: {source: "npz:pair.npz", split: {val: 0.2, test: 0}}, loss: MSELoss}
    """, tmp_path)
    left, right = data.examples.data.inputs
    assert left.shape == (30, 2, 2) and right.shape == (30, 2)
    assert data.examples.data.target.shape == (30, 1)  # shaped like the model's output
    assert data.task.kind == "regression"


def test_synthetic_sequences_are_next_token_targets():
    _, data = prepared("""
        inputs: {tokens: {shape: [12], dtype: long}}
        layers: [Embedding: {num_embeddings: 16, embedding_dim: 8}, Linear: {out_features: 16}]
        train: {data: {source: "synthetic:sequence", args: {samples: 50, noise: 0}}, loss: CrossEntropyLoss}
    """)
    tokens, target = data.examples.data.inputs[0], data.examples.data.target
    assert tokens.shape == target.shape == (50, 12) and tokens.dtype == torch.long
    assert torch.equal(tokens[:, 1:], target[:, :-1])
    assert data.task.kind == "multiclass" and data.task.num_classes == 16 and not data.task.classes_first


def test_a_user_dataset_is_read_once_into_tensors(tmp_path):
    (tmp_path / "squares.py").write_text(textwrap.dedent("""
        import torch
        from torch.utils.data import Dataset

        class Squares(Dataset):
            def __init__(self, count):
                self.count = count
            def __len__(self):
                return self.count
            def __getitem__(self, index):
                return torch.tensor([float(index)]), torch.tensor([float(index) ** 2])
    """))
    _, data = prepared("""
        inputs: {x: {shape: [1]}}
        layers: [Linear: {out_features: 1}]
        train: {data: {dataset: squares.Squares, args: {count: 20}, split: {val: 0.25, test: 0}}, loss: L1Loss}
    """, tmp_path)
    assert data.examples.data.inputs[0][:, 0].tolist() == [float(i) for i in range(20)]
    assert data.examples.data.target[5].item() == 25.0


def test_an_unknown_source_is_a_located_error_with_a_suggestion():
    with pytest.raises(SpecError) as error:
        prepared(DIGITS_CNN.replace("sklearn:digits", "sklearn:digit"))
    assert "unknown sklearn data 'digit'" in str(error.value) and "did you mean 'digits'" in str(error.value)
    assert error.value.first.location.line == 6


def test_make_splits_falls_back_to_random_when_a_class_is_too_small():
    from specc.train.data import Examples
    from specc.lang.train_config import SplitConfig

    data = TensorData((torch.randn(10, 2),), torch.tensor([0] * 9 + [1]))
    (split,) = make_splits(Examples(data), SplitConfig(val=0.2, test=0.0), class_index=True)
    assert len(split.train) == 8 and len(split.val) == 2
