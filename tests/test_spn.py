"""SPN core, the exact SPN -> tensor-train mapping, compression, SPFlow agreement, CLI."""

import itertools
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from trustlab.errors import ConfigError, DataError
from trustlab.spn.circuit import Circuit
from trustlab.spn.classify import accuracy, class_log_joint
from trustlab.spn.compress import em_fit, fine_tune, truncate
from trustlab.spn.learn_structure import learn_spn, random_region_graph, with_class_variable
from trustlab.spn.structure import Graph, Leaf, Product, Sum
from trustlab.spn.tensor_train import dfs_order, exact_ranks, spn_to_tensor_train


def random_tree(cardinality, rng, max_children=3, sum_prob=1.0):
    """A random valid SPN: random partitions (products) and mixtures (sums, each place with ``sum_prob``),
    shared leaves allowed (a DAG)."""
    g = Graph(num_vars=len(cardinality), cardinality=list(cardinality))
    leaf_cache = {}

    def leaf(v):
        k = cardinality[v]
        p = rng.dirichlet(np.ones(k))
        node = Leaf(v, "bernoulli", [float(p[1])]) if k == 2 else Leaf(v, "categorical", [float(q) for q in p])
        if v in leaf_cache and rng.random() < 0.5:  # reuse a node: the graph becomes a DAG
            return leaf_cache[v]
        leaf_cache[v] = g.add(node)
        return leaf_cache[v]

    def build(scope, as_sum):
        if len(scope) == 1:
            if as_sum and rng.random() < 0.5:
                kids = [leaf(scope[0]) for _ in range(2)]
                if kids[0] != kids[1]:
                    return g.add(Sum(kids, [float(w) for w in rng.dirichlet(np.ones(2))]))
            return leaf(scope[0])
        if as_sum and rng.random() < sum_prob:
            kids = [build(scope, False) for _ in range(int(rng.integers(2, max_children + 1)))]
            return g.add(Sum(kids, [float(w) for w in rng.dirichlet(np.ones(len(kids)))]))
        perm = list(rng.permutation(scope))
        cuts = sorted(rng.choice(range(1, len(scope)), size=min(len(scope) - 1, int(rng.integers(1, max_children))),
                             replace=False))
        parts = [perm[a:b] for a, b in zip([0, *cuts], [*cuts, len(scope)])]
        return g.add(Product([build([int(v) for v in p], True) for p in parts]))

    build(list(range(len(cardinality))), True)
    g.validate()
    return g


def all_assignments(cardinality):
    return torch.tensor(list(itertools.product(*[range(k) for k in cardinality])), dtype=torch.float64)


# -- validity and files ----------------------------------------------------------------------
def test_invalid_structures_name_the_offending_node():
    g = Graph([Leaf(0, "bernoulli", [0.3]), Leaf(1, "bernoulli", [0.6]), Sum([0, 1], [0.5, 0.5])], 2, [2, 2])
    with pytest.raises(ConfigError, match="sum node 2 is not complete"):
        g.validate()
    g = Graph([Leaf(0, "bernoulli", [0.3]), Leaf(0, "bernoulli", [0.6]), Product([0, 1])], 1, [2])
    with pytest.raises(ConfigError, match="product node 2 is not decomposable.*variable 0"):
        g.validate()
    g = Graph([Leaf(0, "bernoulli", [0.3]), Leaf(0, "bernoulli", [0.6]), Sum([0, 1], [0.7, 0.7])], 1, [2])
    with pytest.raises(ConfigError, match="sum node 2: weights"):
        g.validate()
    g = Graph([Leaf(0, "categorical", [0.3, 0.3]), Leaf(1, "bernoulli", [0.5]), Product([0, 1])], 2, [2, 2])
    with pytest.raises(ConfigError, match="leaf 0"):
        g.validate()


def test_json_round_trip_keeps_the_distribution(tmp_path):
    g = random_tree([2, 3, 2, 2], np.random.default_rng(0))
    g.save(tmp_path / "spn.json")
    h = Graph.load(tmp_path / "spn.json")
    x = all_assignments([2, 3, 2, 2])
    assert torch.equal(Circuit(g, torch.float64).log_prob(x), Circuit(h, torch.float64).log_prob(x))
    (tmp_path / "bad.json").write_text(json.dumps({"format": "trustlab-spn/1", "num_vars": 1, "cardinality": [2],
                                                   "nodes": [{"type": "leaf", "var": 3, "kind": "bernoulli", "params": [0.5]}]}))
    with pytest.raises(ConfigError, match="leaf 0 is over variable 3"):
        Graph.load(tmp_path / "bad.json")


# -- inference --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_joint_is_normalised_and_marginals_sum_it_out(seed):
    rng = np.random.default_rng(seed)
    card = [2, 3, 2, 2, 3, 2]
    c = Circuit(random_tree(card, rng), torch.float64)
    x = all_assignments(card)
    p = c.log_prob(x).exp().view(*card)
    assert p.sum().item() == pytest.approx(1.0, abs=1e-10)
    miss = sorted(rng.choice(6, size=2, replace=False).tolist())
    xm = x.clone()
    xm[:, miss] = math.nan
    pm = c.log_prob(xm).exp().view(*card)
    expected = p.sum(dim=miss, keepdim=True).expand_as(p)
    torch.testing.assert_close(pm, expected, rtol=1e-9, atol=1e-12)


def test_large_spns_are_evaluated_in_smaller_batches_with_the_same_result(monkeypatch):
    from trustlab.spn import circuit as circuit_module

    rng = np.random.default_rng(3)
    c = Circuit(random_tree([2] * 10, rng), torch.float64)
    x = all_assignments([2] * 10)
    whole = c.log_prob(x)
    monkeypatch.setattr(circuit_module, "VALUES_PER_BATCH", 3 * c.num_positions)
    assert c.rows_per_batch(4096) == 3
    torch.testing.assert_close(c.log_prob(x), whole, rtol=0, atol=1e-12)
    assert c.mpe(torch.full((5, 10), math.nan)).shape == (5, 10)


def test_region_graph_sums_over_shared_children_are_normalised_and_mpe_is_the_best_path():
    card = [2, 3, 2, 2, 2]
    g = random_region_graph(card, depth=2, repetitions=2, sums=3, leaves=2, seed=4)
    c = Circuit(g, torch.float64)
    assert any(c._shared(j) is not None for j in range(len(c.layers)))  # the grouped path is the one under test
    x = all_assignments(card)
    assert c.log_prob(x).exp().sum().item() == pytest.approx(1.0, abs=1e-10)
    xm = x.clone()
    xm[:, 1] = math.nan
    torch.testing.assert_close(c.log_prob(xm).exp().view(*card), c.log_prob(x).exp().view(*card).sum(1, keepdim=True)
                               .expand(*card), rtol=1e-9, atol=1e-12)
    best = c.values(x, "max")[:, c.root_pos]  # max-product value of each full assignment: its best path
    completed = c.mpe(torch.full((1, len(card)), math.nan))
    assert c.values(completed, "max")[0, c.root_pos].item() == pytest.approx(best.max().item(), abs=1e-9)


def test_mpe_of_a_factorised_spn_is_the_exact_argmax_and_respects_evidence():
    leaves = [Leaf(0, "bernoulli", [0.8]), Leaf(1, "categorical", [0.2, 0.5, 0.3]), Leaf(2, "bernoulli", [0.1])]
    g = Graph([*leaves, Product([0, 1, 2])], 3, [2, 3, 2])
    c = Circuit(g, torch.float64)
    out = c.mpe(torch.tensor([[math.nan, math.nan, math.nan], [0.0, math.nan, 1.0]]))
    assert out.tolist() == [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]]


def test_samples_follow_the_distribution():
    card = [2, 2, 3]
    c = Circuit(random_tree(card, np.random.default_rng(5)), torch.float64)
    p = c.log_prob(all_assignments(card)).exp()
    s = c.sample(40000, seed=1)
    idx = (s[:, 0] * 6 + s[:, 1] * 3 + s[:, 2]).long()
    freq = torch.bincount(idx, minlength=12).double() / len(s)
    assert 0.5 * (freq - p).abs().sum().item() < 0.03


def test_em_never_decreases_the_likelihood_and_gradient_improves_it():
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((600, 8)) < np.linspace(0.1, 0.9, 8)).astype(np.float32))
    x[:300, 1] = x[:300, 0]  # a dependency for the mixture to find
    c = Circuit(random_region_graph([2] * 8, depth=2, repetitions=2, sums=3, leaves=3, seed=1))
    hist = c.em(x, iterations=8)
    assert all(b >= a - 1e-4 for a, b in zip(hist, hist[1:])) and hist[-1] > hist[0] + 0.5
    c2 = Circuit(random_region_graph([2] * 8, depth=2, repetitions=2, sums=3, leaves=3, seed=1))
    before = c2.log_prob(x).mean().item()
    c2.fit_gradient(x, epochs=5, lr=0.05)
    assert c2.log_prob(x).mean().item() > before + 0.5


def test_em_keeps_the_iteration_that_fits_validation_rows_best():
    """40 training rows and a large random structure: EM overfits, and the kept parameters are the
    iteration with the best validation likelihood, not the last one."""
    rng = np.random.default_rng(0)
    p = np.linspace(0.1, 0.9, 8)
    x = torch.from_numpy((rng.random((40, 8)) < p).astype(np.float32))
    valid = torch.from_numpy((rng.random((400, 8)) < p).astype(np.float32))
    c = Circuit(random_region_graph([2] * 8, depth=2, repetitions=4, sums=6, leaves=6, seed=1))
    seen = []
    hist = c.em(x, iterations=8, valid=valid, callback=lambda i, ll: seen.append(c.log_prob(valid).mean().item()))
    assert hist[-1] > hist[0] and seen[-1] < max(seen) - 0.05  # training improves, validation falls
    assert c.log_prob(valid).mean().item() == pytest.approx(max(seen), abs=1e-5)


def test_learnspn_splits_independent_blocks_at_the_root():
    rng = np.random.default_rng(0)
    a = rng.random((800, 1)) < 0.5
    b = rng.random((800, 1)) < 0.5
    x = np.concatenate([np.repeat(a, 3, 1), np.repeat(b, 3, 1)], 1).astype(float)
    flip = rng.random(x.shape) < 0.05
    x = np.where(flip, 1 - x, x)
    g = learn_spn(x, [2] * 6, min_instances=50)
    root = g.nodes[g.root]
    assert isinstance(root, Product)
    assert sorted(sorted(s) for s in (g.scopes()[c] for c in root.children)) == [[0, 1, 2], [3, 4, 5]]


def test_gaussian_leaves_and_categorical_leaves_match_spflow():
    pytest.importorskip("spflow")
    from trustlab.spn.spflow_bridge import spflow_log_prob, to_spflow

    g = random_region_graph([2, 3, 0, 2, 0, 2, 2, 3], depth=2, repetitions=2, sums=2, leaves=2, seed=3)
    x = torch.tensor([[0, 2, 0.3, 1, -1.2, 1, 1, 0], [1, 0, 1.5, 0, 0.2, 0, 1, 2]])
    torch.testing.assert_close(spflow_log_prob(to_spflow(g), x).detach(), Circuit(g).log_prob(x), rtol=1e-4, atol=1e-4)


# -- tSPN mapping ------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_tspn_equals_the_spn_on_the_full_joint_table(seed):
    rng = np.random.default_rng(100 + seed)
    d = int(rng.integers(6, 17))
    for attempt in range(20):  # redraw until the exact ranks keep the 2^d-row check quick
        g = random_tree([2] * d, rng, sum_prob=0.6) if seed % 2 == 0 else random_region_graph(
            [2] * d, depth=2, repetitions=2, sums=2, leaves=2, seed=seed + 100 * attempt)
        order = dfs_order(g) if seed < 3 else [int(v) for v in rng.permutation(d)]
        if max(exact_ranks(g, order)) <= 512:
            break
    tt = spn_to_tensor_train(g, order)
    assert tt.ranks() == exact_ranks(g, order)
    x = all_assignments([2] * d)
    spn = Circuit(g, torch.float64).log_prob(x)
    assert (spn - tt.log_prob(x)).abs().max().item() <= 1e-6
    assert abs(tt.log_partition().item()) < 1e-9
    xm = x[:: 2**(d // 2)].clone()
    xm[:, rng.choice(d, size=d // 3, replace=False)] = math.nan
    assert (Circuit(g, torch.float64).log_prob(xm) - tt.log_prob(xm)).abs().max().item() <= 1e-6


def test_tspn_of_categorical_variables_and_class_posterior_in_one_sweep():
    rng = np.random.default_rng(7)
    per = [random_tree([2, 3, 2, 2], rng) for _ in range(3)]
    g = with_class_variable(per, [0.2, 0.3, 0.5])
    c, tt = Circuit(g, torch.float64), spn_to_tensor_train(g)
    x = all_assignments(g.cardinality)
    assert (c.log_prob(x) - tt.log_prob(x)).abs().max().item() <= 1e-9
    torch.testing.assert_close(class_log_joint(tt, x), class_log_joint(c, x), rtol=0, atol=1e-9)
    assert accuracy(tt, x) == accuracy(c, x)


def test_tspn_gradient_is_that_of_the_plain_product_despite_the_running_scales():
    """The sweep divides each row by scales it treats as constants; the log-likelihood's gradient,
    the joint over a variable's values included, must be the textbook one."""
    from trustlab.spn.tensor_train import TensorTrain

    card = [2, 3, 2, 2, 4]
    tt = TensorTrain.random([3, 0, 4, 1, 2], card, 3, seed=5).double()
    x = torch.tensor([[0, 2, 1, 0, 3], [1, math.nan, 0, 1, math.nan], [1, 0, 1, 1, 2]], dtype=torch.float64)

    def plain(cores, row):  # the train as a product of matrices, no scaling
        v = torch.ones(1, 1, dtype=torch.float64)
        for k, core in enumerate(cores):
            value = row[tt.order[k]]
            v = v @ (core.sum(1) if math.isnan(value) else core[:, int(value)])
        return v.squeeze()

    def reference(log_cores):
        cores = [c.exp() for c in log_cores]
        z = plain(cores, [math.nan] * len(card))
        joint = torch.stack([torch.stack([plain(cores, [*r[:4].tolist(), k]) for k in range(4)]) for r in x])
        return torch.stack([plain(cores, r.tolist()) for r in x]).log() - z.log(), joint.log() - z.log()

    params = list(tt.parameters())
    ll, joint = reference(params)
    ours_ll, ours_joint = tt(x), tt.log_joint_over(x, 4)
    torch.testing.assert_close(ours_ll, ll, rtol=0, atol=1e-12)
    torch.testing.assert_close(ours_joint, joint, rtol=0, atol=1e-12)
    weights = torch.rand(3, 4, dtype=torch.float64)
    for ours, theirs in ((ours_ll.sum(), ll.sum()), ((ours_joint * weights).sum(), (joint * weights).sum())):
        for a, b in zip(torch.autograd.grad(ours, params, retain_graph=True),
                        torch.autograd.grad(theirs, params, retain_graph=True)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gaussian_leaves_cannot_map_onto_a_tensor_train():
    g = Graph([Leaf(0, "gaussian", [0.0, 1.0]), Leaf(1, "bernoulli", [0.5]), Product([0, 1])], 2, [0, 2])
    with pytest.raises(ConfigError, match="discrete"):
        spn_to_tensor_train(g)


# -- compression -----------------------------------------------------------------------------
@pytest.mark.parametrize("loss", ["kl", "als"])
def test_truncation_caps_ranks_keeps_a_distribution_and_fine_tuning_recovers_likelihood(loss):
    rng = np.random.default_rng(1)
    x = (rng.random((2000, 12)) < 0.3).astype(float)
    x[:1000, 6:] = 1 - x[:1000, :6]
    g = learn_spn(x, [2] * 12, min_instances=40)
    tt = spn_to_tensor_train(g)
    assert max(tt.ranks()) > 3
    same = truncate(tt, max(tt.ranks()), loss=loss)
    xa = all_assignments([2] * 12)
    assert (same.log_prob(xa) - tt.log_prob(xa)).abs().max().item() < 1e-6  # nothing to cut: unchanged
    small = truncate(tt, 3, loss=loss)
    assert max(small.ranks()) <= 3 and all(bool((c >= 0).all()) for c in small.cores())
    assert small.log_prob(xa).exp().sum().item() == pytest.approx(1.0, abs=1e-6)
    xt = torch.from_numpy(x).float()
    before = small.log_prob(xt).mean().item()
    hist = fine_tune(small.float(), xt, epochs=4, lr=0.05)
    assert hist[-1]["train_ll"] > before and small.num_parameters() < tt.num_parameters()


def test_mutual_information_order_puts_a_markov_chain_side_by_side():
    from trustlab.spn.tensor_train import mutual_information_order

    rng = np.random.default_rng(0)
    chain = [0, 3, 1, 4, 2]  # each variable copies the previous one of the chain with probability 0.9
    x = np.zeros((4000, 5), dtype=int)
    x[:, chain[0]] = rng.random(4000) < 0.5
    for a, b in zip(chain, chain[1:]):
        x[:, b] = np.where(rng.random(4000) < 0.9, x[:, a], 1 - x[:, a])
    order = mutual_information_order(torch.from_numpy(x).float(), [2] * 5)
    assert order in (chain, chain[::-1])


def test_random_train_is_normalised_and_capped():
    from trustlab.spn.tensor_train import TensorTrain, capped_ranks

    assert capped_ranks([2, 2, 2, 2, 2], 5) == [2, 4, 4, 2] and capped_ranks([3, 2], 8) == [2]
    tt = TensorTrain.random([2, 0, 1, 3], [2, 3, 2, 2], 4, seed=1)
    assert tt.ranks() == [2, 4, 2]  # cards in order 2, 2, 3, 2
    assert tt.log_prob(all_assignments([2, 3, 2, 2])).exp().sum().item() == pytest.approx(1.0, abs=1e-5)


def test_fine_tune_keeps_the_best_validation_epoch():
    from trustlab.spn.tensor_train import TensorTrain

    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((400, 6)) < 0.3).astype(np.float32))
    tt = TensorTrain.random(list(range(6)), [2] * 6, 3)
    hist = fine_tune(tt, x[:40], epochs=12, lr=0.3, batch_size=8, valid=x[200:])  # a tiny set: it over-fits
    best = max(h["valid_ll"] for h in hist)
    assert tt.log_prob(x[200:]).mean().item() == pytest.approx(best, abs=1e-5)


def test_em_on_a_train_keeps_it_normalised_and_never_lowers_the_likelihood():
    from trustlab.spn.tensor_train import TensorTrain

    rng = np.random.default_rng(0)
    x = (rng.random((3000, 8)) < 0.3).astype(np.float32)
    x[:1500, 4:] = 1 - x[:1500, :4]  # two halves of the rows with different dependence
    x = torch.from_numpy(x)
    x[::7, 2] = float("nan")  # missing values are summed out in the E-step
    tt = TensorTrain.random([3, 0, 5, 1, 7, 2, 6, 4], [2] * 8, 4, seed=2)
    xa = all_assignments([2] * 8)
    before = tt.log_prob(xa)
    tt.normalise_()  # conditionals in every core, the same distribution
    assert (tt.log_prob(xa) - before).abs().max().item() < 1e-5
    assert all(torch.allclose(c.sum((1, 2)), torch.ones(c.shape[0])) for c in tt.cores())
    assert tt.log_partition().item() == pytest.approx(0.0, abs=1e-5)
    hist = em_fit(tt, x, iterations=25, smoothing=1e-6)
    lls = [h["train_ll"] for h in hist]
    assert all(b >= a - 1e-4 for a, b in zip(lls, lls[1:]))  # EM is monotone
    assert lls[-1] > lls[0] + 0.5 and tt.log_partition().item() == pytest.approx(0.0, abs=1e-5)
    assert tt.log_prob(xa).exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    assert all(bool((c >= 0).all()) for c in tt.cores())
    long = TensorTrain.random(list(range(80)), [2] * 80, 16, seed=3)  # raw row sums grow as 32^80: beyond float32
    rows = torch.from_numpy((rng.random((50, 80)) < 0.5).astype(np.float32))
    before = long.log_prob(rows)
    assert (long.normalise_().log_prob(rows) - before).abs().max().item() < 1e-3
    assert long.log_partition().item() == pytest.approx(0.0, abs=1e-4)
    overfit = TensorTrain.random(list(range(8)), [2] * 8, 4)  # tiny training set: the best validation iteration is kept
    hist = em_fit(overfit, x[:30].nan_to_num(0.0), iterations=15, smoothing=1e-6, valid=x[2000:].nan_to_num(0.0))
    assert overfit.log_prob(x[2000:].nan_to_num(0.0)).mean().item() == pytest.approx(max(h["valid_ll"] for h in hist), abs=1e-5)


def test_em_fit_refuses_a_discriminative_weight():
    from trustlab.spn.config import CompressConfig

    with pytest.raises(ConfigError, match="--fit em"):
        CompressConfig(source="x", fit="em", discriminative=0.5).validate()
    with pytest.raises(ConfigError, match="--fit sgd"):
        CompressConfig(source="x", fit="sgd").validate()


def test_validation_split_is_carved_from_training_rows(cli, tmp_path):
    from trustlab.spn.data import DiscreteData, with_valid_split

    d = DiscreteData(torch.arange(20.0).view(10, 2), torch.zeros(3, 2), [2, 2], "toy")
    v = with_valid_split(d, 0.2)
    assert len(v.x_valid) == 2 and len(v.x_train) == 8 and v.x_test is d.x_test
    assert sorted(torch.cat([v.x_train, v.x_valid])[:, 0].tolist()) == sorted(d.x_train[:, 0].tolist())
    r = cli("spn", "fit", "--dataset", "digits", "--valid-share", "1.5", "--out", str(tmp_path / "fit"))
    assert r.returncode == 2 and "--valid-share" in r.stderr and "Traceback" not in r.stderr


def test_rank_below_one_is_refused():
    g = random_tree([2, 2, 2], np.random.default_rng(0))
    with pytest.raises(ConfigError, match="rank 0"):
        truncate(spn_to_tensor_train(g), 0)
    with pytest.raises(ConfigError, match="rounding 'svd'"):
        truncate(spn_to_tensor_train(g), 2, loss="svd")


# -- the command line -------------------------------------------------------------------------
def test_fit_compress_eval_on_digits(cli, tmp_path):
    fit = tmp_path / "fit"
    r = cli("spn", "fit", "--out", str(fit), "--dataset", "digits", "--min-instances", "60")
    assert r.returncode == 0, r.stderr
    s = json.loads((fit / "summary.json").read_text())
    assert s["accuracy"] > 0.85 and s["test_ll"] < 0 and s["exact_tt_parameters"] > s["parameters"]
    r = cli("spn", "compress", str(fit), "--rank", "4,8", "--epochs", "1", "--distill-samples", "2000", "--quiet")
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "fit-tspn" / "summary.json").read_text())
    assert c["exact_tspn"]["max_abs_log_prob_gap"] < 1e-6
    assert [row["rank"] for row in c["ranks"]] == [4, 8]
    assert c["ranks"][0]["parameters"] < c["ranks"][1]["parameters"] < c["exact_tspn"]["parameters"]
    assert c["route"] == "exact" and c["spn_parameters"] == s["parameters"] and "valid_ll" in s  # a 10% validation split
    for row in c["ranks"]:
        assert row["ratio_vs_spn"] == pytest.approx(s["parameters"] / row["parameters"]) and "valid_ll" in row
        assert row["speedup_vs_spn"] == pytest.approx(row["rows_per_s"] / c["spn"]["rows_per_s"])
    assert (tmp_path / "fit-tspn" / "report.html").exists() and (tmp_path / "fit-tspn" / "plots" / "tradeoff.png").exists()
    r = cli("spn", "eval", str(tmp_path / "fit-tspn"), "--rank", "8", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == pytest.approx(c["ranks"][1]["accuracy"])
    again = cli("spn", "compress", str(fit), "--rank", "4,8", "--resume", "--quiet")  # both ranks done: reused
    assert again.returncode == 0 and json.loads((tmp_path / "fit-tspn" / "summary.json").read_text())["ranks"] == c["ranks"]


def test_target_ratio_is_against_the_spn_and_random_trains_need_no_exact_map(cli, tmp_path):
    rows = (np.random.default_rng(0).random((300, 10)) < 0.4).astype(int)
    np.savetxt(tmp_path / "toy.ts.data", rows, fmt="%d", delimiter=",")
    fit = tmp_path / "fit"
    r = cli("spn", "fit", "--dataset", "csv", "--csv", str(tmp_path / "toy.ts.data"), "--out", str(fit),
            "--structure", "rat", "--repetitions", "3", "--sums", "3", "--leaves", "3")
    assert r.returncode == 0, r.stderr
    spn_params = json.loads((fit / "summary.json").read_text())["parameters"]
    r = cli("spn", "compress", str(fit), "--target-ratio", "2", "--init", "random", "--distill-samples", "0",
            "--order", "mi", "--epochs", "2", "--quiet", "--out", str(tmp_path / "tt"))
    assert r.returncode == 0, r.stderr
    c = json.loads((tmp_path / "tt" / "summary.json").read_text())
    (row,) = c["ranks"]
    assert c["route"] == "random" and not c["exact_tspn"]["built"] and "no SPN samples" in c["fitted_on"]
    assert c["order"] == "mi" and json.loads(cli("spn", "eval", str(tmp_path / "tt"), "--json").stdout)["test_ll"] < 0
    assert row["parameters"] <= spn_params / 2 and row["ratio_vs_spn"] >= 2 and "× smaller than the SPN" in r.stdout
    bigger = rows.shape[1] * 2 * (row["rank"] + 1) ** 2  # the next rank would break the budget
    assert bigger > spn_params / 2 or row["rank"] == 2 ** 5
    for bad, message in ((["--target-ratio", "0.5"], "below 1"), (["--target-ratio", "1e9"], "ask for a ratio of at most"),
                         (["--rank", "2", "--order", "bfs"], "--order bfs"), (["--rank", "2", "--rounding", "svd"], "--rounding svd")):
        r = cli("spn", "compress", str(fit), *bad, "--init", "random")
        assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_binary_csv_density_model(cli, tmp_path):
    rng = np.random.default_rng(0)
    rows = (rng.random((300, 10)) < 0.4).astype(int)
    np.savetxt(tmp_path / "toy.ts.data", rows[:240], fmt="%d", delimiter=",")
    np.savetxt(tmp_path / "toy.test.data", rows[240:], fmt="%d", delimiter=",")
    r = cli("spn", "fit", "--dataset", "csv", "--csv", str(tmp_path / "toy.ts.data"), "--out", str(tmp_path / "fit"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert s["test_rows"] == 60 and "accuracy" not in s and -10 * math.log(2) - 1 < s["test_ll"] < 0


@pytest.mark.parametrize("content, message", [("0,1,2\n1,0,1\n", "holds 2"), ("0,1,nan\n1,0,1\n", "holds NaN"),
                                              ("0,1\n1,0,1\n", "3 values")])
def test_bad_csv_is_a_one_line_error(cli, tmp_path, content, message):
    (tmp_path / "bad.csv").write_text(content * 5)
    r = cli("spn", "fit", "--dataset", "csv", "--csv", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "fit"))
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "fit").exists()


def test_a_csv_header_is_skipped_and_errors_name_the_file_line(tmp_path):
    from trustlab.spn.data import binary_csv

    rows = "1,0,1\n0,1,0\n\n1,1,1\n0,0,0\n1,0,0\n"
    (tmp_path / "plain.csv").write_text(rows)
    (tmp_path / "named.csv").write_text("\ufeffsmoker,cough,fever\n" + rows)  # what a spreadsheet export writes first
    plain, named = binary_csv(tmp_path / "plain.csv"), binary_csv(tmp_path / "named.csv")
    assert torch.equal(plain.x_train, named.x_train) and torch.equal(plain.x_test, named.x_test)
    (tmp_path / "bad.csv").write_text("smoker,cough,fever\n" + rows + "0,1,3\n")
    with pytest.raises(DataError, match=r"bad.csv:8: column 2 holds 3"):  # the line in the file, header and blank counted
        binary_csv(tmp_path / "bad.csv")


def test_bad_rank_and_bad_structure_file_exit_2(cli, tmp_path):
    r = cli("spn", "compress", str(tmp_path), "--rank", "0")
    assert r.returncode == 2 and "at least 1" in r.stderr
    run = tmp_path / "fit"
    assert cli("spn", "fit", "--out", str(run), "--dataset", "digits", "--min-instances", "200").returncode == 0
    (run / "spn.json").write_text('{"format": "trustlab-spn/1", "nodes": [}')
    r = cli("spn", "compress", str(run), "--rank", "2")
    assert r.returncode == 2 and "not JSON" in r.stderr and "Traceback" not in r.stderr


DEBD = Path(os.environ.get("TRUSTLAB_DEBD", Path(__file__).resolve().parents[2] / "shared" / "data" / "debd"))


@pytest.mark.skipif(not (DEBD / "nltcs.train.data").is_file(), reason=f"the DEBD sets are not at {DEBD} (TRUSTLAB_DEBD)")
def test_learnspn_on_nltcs_reaches_the_published_likelihood(cli, tmp_path):
    r = cli("spn", "fit", "--dataset", "debd", "--name", "nltcs", "--data-dir", str(DEBD), "--out", str(tmp_path / "fit"))
    assert r.returncode == 0, r.stderr
    s = json.loads((tmp_path / "fit" / "summary.json").read_text())
    assert (s["train_rows"], s["test_rows"], s["variables"]) == (16181, 3236, 16) and "valid_ll" in s
    assert s["test_ll"] > -6.11 - 0.5  # LearnSPN as published (Gens & Domingos 2013), within 0.5 nats per row


def _debd_folder(root, train="0,1\n1,1\n", valid="1,0\n", test="0,0\n"):
    root.mkdir()
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        if text is not None:
            (root / f"toy.{split}.data").write_text(text)
    return root


def test_debd_reader_keeps_the_fixed_splits(tmp_path):
    from trustlab.spn.data import debd

    d = debd("toy", _debd_folder(tmp_path / "d"))
    assert d.x_train.tolist() == [[0, 1], [1, 1]] and d.x_valid.tolist() == [[1, 0]] and d.x_test.tolist() == [[0, 0]]
    with pytest.raises(DataError, match=r"nltcs.train.data is missing.*\(this one has: toy\)"):  # the sets it does hold
        debd("nltcs", tmp_path / "d")


@pytest.mark.parametrize("files, message", [({"valid": None}, "toy.valid.data is missing"),
                                            ({"test": "0,1,1\n"}, "3 columns"), ({"train": "0,1\n1,2\n"}, "toy.train.data:2"),
                                            ({"valid": ""}, "holds no rows"), ({"train": "0,1\n1\n"}, "toy.train.data:2")])
def test_bad_debd_folder_is_a_one_line_error(cli, tmp_path, files, message):
    folder = _debd_folder(tmp_path / "d", **files)
    r = cli("spn", "fit", "--dataset", "debd", "--name", "toy", "--data-dir", str(folder), "--out", str(tmp_path / "fit"))
    assert r.returncode == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "fit").exists()
