"""Bad input raises ValueError (or TypeError) naming the argument."""

import math

import pytest
import torch

import pcircuits as pc


@pytest.fixture
def circuit():
    a = pc.inputs(0, 2, pc.Categorical(3))
    b = pc.inputs(1, 2, pc.Bernoulli())
    g = pc.inputs(2, 2, pc.Gaussian())
    return pc.compile(pc.summate(pc.multiply(a, b, g), num_nodes=1))


def test_wrong_number_of_columns(circuit):
    with pytest.raises(ValueError, match=r"x must have shape \[batch, 3\]"):
        circuit(torch.zeros(2, 4))


def test_category_out_of_range(circuit):
    with pytest.raises(ValueError, match="category 3 for variable 0"):
        circuit(torch.tensor([[3.0, 0, 0]]))
    with pytest.raises(ValueError, match="category -1 for variable 1"):
        circuit(torch.tensor([[0, -1, 0]]))


def test_nan_in_discrete_column(circuit):
    with pytest.raises(ValueError, match="NaN"):
        circuit(torch.tensor([[math.nan, 0, 0.5]]))
    # the same NaN marked missing is fine
    out = circuit(torch.tensor([[math.nan, 0, 0.5]]), torch.tensor([[True, False, False]]))
    assert torch.isfinite(out).all()


def test_non_integer_category(circuit):
    with pytest.raises(ValueError, match="non-integer"):
        circuit(torch.tensor([[0.5, 0, 0]]))


def test_missing_of_wrong_shape_or_type(circuit):
    with pytest.raises(ValueError, match="missing must have the shape of x"):
        circuit(torch.zeros(2, 3), torch.zeros(2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="missing must be a bool"):
        circuit(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        circuit([[0, 0, 0]])


def test_soft_evidence_of_wrong_shape(circuit):
    with pytest.raises(ValueError, match="soft_evidence must have shape"):
        circuit(torch.zeros(2, 3), soft_evidence=torch.zeros(2, 3, 2))
    with pytest.raises(ValueError, match="NaN"):
        circuit(torch.zeros(1, 3), soft_evidence=torch.full((1, 3, 3), math.nan))


def test_soft_evidence_on_gaussian_variable(circuit):
    ev = torch.zeros(1, 3, 3)
    ev[0, 2, 0] = 1.0
    with pytest.raises(ValueError, match="variable 2 is continuous"):
        circuit(torch.zeros(1, 3), soft_evidence=ev)


def test_non_decomposable_product():
    a = pc.inputs(0, 2, pc.Bernoulli())
    b = pc.inputs(0, 2, pc.Bernoulli())
    with pytest.raises(ValueError, match="not decomposable"):
        pc.multiply(a, b)


def test_non_smooth_sum():
    a = pc.inputs(0, 2, pc.Bernoulli())
    b = pc.inputs(1, 2, pc.Bernoulli())
    with pytest.raises(ValueError, match="not smooth"):
        pc.summate(a, b, num_nodes=1, name="mix")


def test_root_with_more_than_one_node():
    a = pc.inputs(0, 2, pc.Bernoulli())
    with pytest.raises(ValueError, match="exactly one node"):
        pc.compile(pc.summate(a, num_nodes=2))


def test_variables_must_be_contiguous():
    root = pc.summate(pc.multiply(pc.inputs(0, 1, pc.Bernoulli()), pc.inputs(2, 1, pc.Bernoulli())), num_nodes=1)
    with pytest.raises(ValueError, match=r"variables \[1\] are absent"):
        pc.compile(root)


def test_bad_group_arguments():
    a = pc.inputs(0, 2, pc.Bernoulli())
    with pytest.raises(ValueError, match="num_nodes"):
        pc.inputs(0, 0, pc.Bernoulli())
    with pytest.raises(TypeError, match="dist"):
        pc.inputs(0, 2, "bernoulli")
    with pytest.raises(ValueError, match="element-wise"):
        pc.multiply(a, pc.inputs(1, 3, pc.Bernoulli()))
    with pytest.raises(ValueError, match=r"edges\[1\]"):
        pc.summate(a, num_nodes=1, edges=torch.tensor([[0], [5]]))
    with pytest.raises(ValueError, match="tie_with"):
        pc.inputs(1, 2, pc.Categorical(3), tie_with=a)
    with pytest.raises(ValueError, match="num_cats"):
        pc.Categorical(1)
    with pytest.raises(ValueError, match="backend"):
        pc.compile(pc.summate(a, num_nodes=1), backend="cuda")
