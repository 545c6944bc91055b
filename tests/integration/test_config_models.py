"""Typed params blocks (common/config_models.py, the hu19 table models): range and allowed-value errors
before any run (docs/bad_inputs.md rows 59-68), run configs built from the models, and the config
hash that leaves declared option defaults out (every committed result keeps its hash)."""
import copy
import json

import pytest

from common.config import HASH_OMITTED_DEFAULTS, config_hash, load_params, without_omitted_defaults
from common.config_models import PASS_MODES, Block, Float, Int, List, Str, Value, parse
from common.errors import ConfigError
from papers.hu19 import tables
from pipelines.grid import table_configs
from tests.conftest import REPO
from tests.integration.test_bad_inputs import assert_clear_error, repro, table2, tree, write_params


@pytest.fixture
def work(tmp_path):
    """A tmp project whose params.yaml (smoke profile) points at tmp results/splits."""
    write_params(tmp_path)
    return tmp_path


@pytest.fixture
def fake_execute(monkeypatch):
    """hu19's `execute` replaced by a stand-in that records the configs it was asked to run."""
    calls = []
    monkeypatch.setattr(tables, "execute", lambda config, mirror, **_: calls.append(config) or {
        "metrics": {"test_acc": 50.0, "steps_at_best": 2}, "history": []})
    return calls


def smoke(p, table):
    return p["hu19"]["profiles"]["smoke"][table]


# --- bad values: each a params error naming the key, before any run (dry run, real run, prepare) -------

T2 = r"params\.yaml: hu19\.profiles\.smoke\.table2"
T4 = r"params\.yaml: hu19\.profiles\.smoke\.table4"
T1 = r"params\.yaml: hu19\.profiles\.smoke\.table1"
T3 = r"params\.yaml: hu19\.profiles\.smoke\.table3"

RANGE_CASES = [
    # (table, edit of the smoke params, expected error line)
    pytest.param("table2", lambda p: table2(p).update(batch_size=0), rf"{T2}\.batch_size: expected >= 1, got 0$",
                 id="batch_size-zero"),
    pytest.param("table2", lambda p: table2(p).update(lr=-0.001), rf"{T2}\.lr: expected a number > 0, got -0\.001$",
                 id="lr-negative"),
    pytest.param("table2", lambda p: table2(p).update(epochs=0), rf"{T2}\.epochs: expected >= 1, got 0$",
                 id="epochs-zero"),
    pytest.param("table2", lambda p: table2(p).update(seeds=0), rf"{T2}\.seeds: expected >= 1, got 0$",
                 id="seeds-zero"),
    pytest.param("table2", lambda p: table2(p).update(weight_decay=-0.01),
                 rf"{T2}\.weight_decay: expected a number >= 0, got -0\.01$", id="weight_decay-negative"),
    pytest.param("table2", lambda p: table2(p).update(momentum=1.0),
                 rf"{T2}\.momentum: expected a number >= 0 and < 1, got 1\.0$", id="momentum-one"),
    pytest.param("table2", lambda p: table2(p).update(momentum=-0.5),
                 rf"{T2}\.momentum: expected a number >= 0 and < 1, got -0\.5$", id="momentum-negative"),
    pytest.param("table2", lambda p: table2(p).update(train_per_class=0),
                 rf"{T2}\.train_per_class: expected >= 1, got 0$", id="train_per_class-zero"),
    pytest.param("table2", lambda p: table2(p).update(min_epochs=2),
                 rf"{T2}\.min_epochs: expected < epochs \(2\), got 2$", id="min_epochs-not-below-epochs"),
    pytest.param("table2", lambda p: table2(p)["weighting"].update(softmax_temp=0),
                 rf"{T2}\.weighting\.softmax_temp: expected a number > 0, got 0$", id="softmax_temp-zero"),
    pytest.param("table2", lambda p: table2(p)["weighting"].update(w_decay=0),
                 rf"{T2}\.weighting\.w_decay: expected a number > 0, got 0$", id="w_decay-zero"),
    pytest.param("table2", lambda p: table2(p)["weighting"].update(norm="l2"),
                 rf"{T2}\.weighting\.norm: 'l2'; expected one of \['softmax', 'linear'\]$", id="norm-unknown"),
    pytest.param("table2", lambda p: table2(p)["weighting"].pop("w_init"),
                 rf"{T2}\.weighting\.w_init: missing \(expected float; needed by ours_weight\)$",
                 id="weighting-key-missing"),
    pytest.param("table2", lambda p: table2(p).update(arch="vgg16"),
                 rf"{T2}\.arch: 'vgg16'; expected one of \['resnet18', 'resnet34', 'resnet50'\]$", id="arch-unknown"),
    pytest.param("table2", lambda p: table2(p).update(methods=["base", "ren", "base"]),
                 rf"{T2}\.methods: repeats \['base'\]; expected distinct values$", id="methods-repeated"),
    pytest.param("table2", lambda p: table2(p).update(meta_step={"per_example": "test"}),
                 rf"{T2}\.meta_step\.per_example: 'test'; expected one of \['train', 'eval'\]$",
                 id="meta_step-mode"),
    pytest.param("table2", lambda p: table2(p).update(meta_step={"dev_batch_size": 0}),
                 rf"{T2}\.meta_step\.dev_batch_size: expected >= 1, got 0$", id="meta_step-dev_batch_size"),
    pytest.param("table2", lambda p: table2(p).update(meta_step={"chunk": -8}),
                 rf"{T2}\.meta_step\.chunk: expected >= 1, got -8$", id="meta_step-chunk"),
    pytest.param("table2", lambda p: table2(p).update(meta_step={"uniform_before_adam_state": "yes"}),
                 rf"{T2}\.meta_step\.uniform_before_adam_state: expected bool, got str 'yes'$",
                 id="meta_step-bool"),
    pytest.param("table2", lambda p: table2(p).update(meta_step={"chunks": 8}),
                 rf"{T2}\.meta_step: unknown key\(s\) \['chunks'\]; known: \['chunk', 'dev', 'dev_batch_size', "
                 r"'per_example', 'uniform_before_adam_state'\]$", id="meta_step-unknown-key"),
    pytest.param("table2", lambda p: table2(p).update(lr=float("nan")),
                 rf"{T2}\.lr: expected a finite number, got nan$", id="lr-nan"),
    pytest.param("table2", lambda p: table2(p).update(protocol="random"),
                 rf"{T2}\.protocol: 'random'; expected one of \['fixed', 'per_seed'\]$", id="protocol-unknown"),
    pytest.param("table2", lambda p: table2(p).update(settings={}),
                 rf"{T2}\.settings: expected at least one setting \(of \['pretrained', 'not_pretrained'\]\)$",
                 id="settings-empty"),
    pytest.param("table2", lambda p: table2(p).update(not_run={"pretrain": "no weights"}),
                 rf"{T2}\.not_run: unknown setting 'pretrain' for table2; expected one of", id="not_run-unknown"),
    pytest.param("table2", lambda p: table2(p).update(classes=[0, 1]),
                 rf"{T2}: unknown key\(s\) \['classes'\]; known: \['arch', ", id="table2-classes-ignored"),
    pytest.param("table4", lambda p: smoke(p, "table4").update(classes=[0, 1, 2]),
                 rf"{T4}\.classes: expected \[minority class, majority class\], got \[0, 1, 2\]$", id="classes-three"),
    pytest.param("table3", lambda p: smoke(p, "table3").update(classes=[1]),
                 rf"{T3}\.classes: expected \[minority label, majority label\], got \[1\]$",
                 id="classes-one-text"),
    pytest.param("table4", lambda p: smoke(p, "table4").update(classes=[1, 1]),
                 rf"{T4}\.classes: repeats \[1\]; expected distinct values$", id="classes-repeated"),
    pytest.param("table4", lambda p: smoke(p, "table4")["settings"]["ratio_20"].update(minority=0),
                 rf"{T4}\.settings\.ratio_20\.minority: expected >= 1, got 0$", id="minority-zero"),
    pytest.param("table1", lambda p: smoke(p, "table1")["augmentation"].update(n_aug_meta=0),
                 rf"{T1}\.augmentation\.n_aug_meta: expected >= 1, got 0$", id="n_aug_meta-zero"),
    pytest.param("table1", lambda p: smoke(p, "table1")["augmentation"].update(tau=0.0),
                 rf"{T1}\.augmentation\.tau: expected a number > 0, got 0\.0$", id="tau-zero"),
    pytest.param("table1", lambda p: smoke(p, "table1").update(max_seq_len=4),
                 rf"{T1}\.max_seq_len: expected >= 8, got 4$", id="max_seq_len-4"),
    pytest.param("table1", lambda p: smoke(p, "table1")["settings"]["sst5"].update(train_per_class=0),
                 rf"{T1}\.settings\.sst5\.train_per_class: expected >= 1, got 0$", id="text-train_per_class-zero"),
    pytest.param("table1", lambda p: smoke(p, "table1")["settings"]["sst5"].update(dev_source="train_tail"),
                 rf"{T1}\.settings\.sst5\.dev_pool_size: expected >= dev_per_class \(2\) with dev_source "
                 r"'train_tail', got 0$", id="dev_pool_size-below-dev_per_class"),
    pytest.param("table1", lambda p: smoke(p, "table1")["weighting"].update(min_epochs=2),
                 rf"{T1}\.weighting\.min_epochs: expected < epochs \(2\), got 2$", id="weighting-min_epochs"),
    pytest.param("table1", lambda p: smoke(p, "table1")["synonym"].update(p_replace=1.5),
                 rf"{T1}\.synonym\.p_replace: expected a number >= 0 and <= 1, got 1\.5$", id="p_replace"),
    pytest.param("table1", lambda p: smoke(p, "table1")["augmentation"].pop("tau"),
                 rf"{T1}\.augmentation\.tau: missing \(expected float; needed by fixed_aug, ours_aug\)$",
                 id="augmentation-key-missing"),
    pytest.param("table1", lambda p: smoke(p, "table1").update(backbone="gpt2"),
                 rf"{T1}\.backbone: unknown backbone 'gpt2'; expected one of \['tiny-random-bert', ", id="backbone"),
]


@pytest.mark.parametrize("table,mutate,pattern", RANGE_CASES)
def test_bad_value_is_a_params_error(work, capsys, table, mutate, pattern):
    path = write_params(work, mutate=mutate)
    before = tree(work / "results")
    code, _, err = repro(capsys, "--params", path, "run", "--table", table, "--dry-run")
    assert_clear_error(code, err, pattern)
    assert tree(work / "results") == before


@pytest.mark.parametrize("mutate,pattern", [
    pytest.param(lambda p: table2(p).update(batch_size=0), r"table2\.batch_size: expected >= 1, got 0$",
                 id="batch_size-zero"),
    pytest.param(lambda p: table2(p).update(lr=-0.001), r"table2\.lr: expected a number > 0, got -0\.001$",
                 id="lr-negative"),
])
def test_bad_value_stops_a_real_run_and_prepare_before_anything_runs(work, capsys, fake_execute, mutate, pattern):
    """These used to fail inside every run (`range() arg 3 must not be zero`, torch's `Invalid learning
    rate`); now `repro run` and `repro prepare` stop at validation, before any run or split is made."""
    path = write_params(work, mutate=mutate)
    code, _, err = repro(capsys, "--params", path, "run", "--table", "table2")
    assert_clear_error(code, err, pattern)
    assert fake_execute == []
    code, _, err = repro(capsys, "--params", path, "prepare", "--table", "table2")
    assert_clear_error(code, err, pattern)
    assert not (work / "splits" / "smoke").exists()


def test_base_runner_threads_per_worker(work, capsys):
    path = write_params(work, mutate=lambda p: p["base"]["runner"].update(threads_per_worker=0))
    code, _, err = repro(capsys, "--params", path, "run", "--table", "table2", "--dry-run")
    assert_clear_error(code, err, r"params\.yaml: base\.runner\.threads_per_worker: expected >= 1, got 0$")


# --- the value types ----------------------------------------------------------------------------------

class Demo(Block):
    n: Int(ge=1)
    x: Float(gt=0, le=1) = 0.5
    name: Str(choices=("a", "b")) = "a"
    ids: List(Value((int,), ge=0), unique=True) = None


@pytest.mark.parametrize("data,message", [
    ({"n": True}, "p.n: expected int, got bool True"),
    ({"n": "3"}, "p.n: expected int, got str '3' (a quoted number is text in YAML: write 3 without quotes)"),
    ({"n": 1, "x": "1e-3"}, ("p.x: expected float, got str '1e-3' (YAML reads 1e-3 as text: write 0.001-style "
                             "decimals, or exponents with a dot and a signed exponent such as 1.0e-3)")),
    ({"n": 1, "x": float("inf")}, "p.x: expected a finite number, got inf"),
    ({"n": 1, "x": 2}, "p.x: expected a number > 0 and <= 1, got 2"),
    ({"n": 1, "name": "c"}, "p.name: 'c'; expected one of ['a', 'b']"),
    ({"n": 1, "ids": [0, -1]}, "p.ids[1]: expected >= 0, got -1"),
    ({"n": 1, "ids": "0"}, "p.ids: expected list, got str '0'"),
    ({}, "p.n: missing (expected int)"),
    ({"m": 1}, "p: unknown key(s) ['m']; known: ['ids', 'n', 'name', 'x']"),
    ({"m": 1, "n": 0}, "p: unknown key(s) ['m']; known: ['ids', 'n', 'name', 'x']"),   # unknown keys first
])
def test_value_types_and_messages(data, message):
    with pytest.raises(ConfigError) as exc:
        parse(Demo, data, "p")
    assert str(exc.value) == message


def test_values_keep_their_yaml_types():
    """Nothing is coerced: an int given for a float stays an int (so run configs and hashes are what
    YAML read), a list stays the same list."""
    ids = [3, 1]
    demo = parse(Demo, {"n": 2, "x": 1, "ids": ids}, "p")
    assert type(demo.x) is int and demo.ids is ids
    assert demo.given() == {"n": 2, "x": 1, "ids": ids}


def test_pass_modes_match_the_meta_step():
    from common.meta.lookahead import MODES
    assert tuple(PASS_MODES) == tuple(MODES)


# --- run configs from the models ----------------------------------------------------------------------

@pytest.fixture
def params():
    return load_params(REPO / "params.yaml")


def by_method(configs):
    return {c["method"]: c for c in configs if c["seed"] == 0}


def test_meta_step_block_overrides_the_official_modes(params):
    default = by_method(table_configs(params, "hu19", "smoke", "table2"))
    smoke(params, "table2")["meta_step"] = {"dev_batch_size": None, "chunk": 4}
    changed = by_method(table_configs(params, "hu19", "smoke", "table2"))
    assert default["ren"]["meta_step"] == {"per_example": "eval", "dev": "train", "dev_batch_size": 10}
    assert changed["ren"]["meta_step"] == {"per_example": "eval", "dev": "train", "dev_batch_size": None, "chunk": 4}
    assert changed["base"] == default["base"] and "meta_step" not in changed["base"]
    smoke(params, "table1")["meta_step"] = {"chunk": 2, "dev": "eval"}
    text = by_method(table_configs(params, "hu19", "smoke", "table1"))
    assert text["ours_weight"]["meta_step"] == {"per_example": "train", "dev": "eval", "chunk": 2,
                                                "uniform_before_adam_state": True}
    assert text["ours_aug"]["meta_step"] == {"per_example": "train", "dev": "eval"}   # modes only


def test_ints_given_for_floats_reach_the_run_config_unchanged(params):
    smoke(params, "table2")["weight_decay"] = 0
    config = by_method(table_configs(params, "hu19", "smoke", "table2"))["base"]
    assert type(config["optimizer"]["weight_decay"]) is int


def test_options_at_their_default_are_left_out_of_run_configs(params):
    """Spelling out `pooling: cls` or `test_sample: null` gives the same run configs as leaving them out."""
    default = table_configs(params, "hu19", "smoke", "table1")
    assert all("pooling" not in c and "test_sample" not in c for c in default)
    smoke(params, "table1")["pooling"] = "cls"
    smoke(params, "table1")["settings"]["sst5"]["test_sample"] = None
    assert table_configs(params, "hu19", "smoke", "table1") == default
    smoke(params, "table1")["settings"]["sst5"]["test_sample"] = 40
    assert all(c["test_sample"] == 40 for c in table_configs(params, "hu19", "smoke", "table1"))


# --- config hash: declared defaults left out, every committed result keeps its hash -------------------

def committed_results():
    files = sorted(p for p in (REPO / "results").rglob("seed*.json") if ".superseded-" not in p.name)
    return [(p, json.loads(p.read_text())) for p in files]


def test_every_committed_result_keeps_its_config_hash():
    results = committed_results()
    assert len(results) >= 300, "the committed results are expected here"
    wrong = [str(p.relative_to(REPO)) for p, r in results if config_hash(r["config"]) != r["config_hash"]]
    assert not wrong, f"{len(wrong)} of {len(results)} results re-keyed, e.g. {wrong[:3]}"


@pytest.mark.parametrize("key", sorted(HASH_OMITTED_DEFAULTS))
def test_adding_an_option_at_its_default_keeps_the_hash(key):
    default = HASH_OMITTED_DEFAULTS[key]
    for _, result in committed_results()[:50]:
        config = result["config"]
        if key in config:
            continue
        assert config_hash({**config, key: default}) == config_hash(config) == result["config_hash"]
        other = "mean" if isinstance(default, str) else 1
        assert config_hash({**config, key: other}) != config_hash(config)


def test_declared_nested_option_is_left_out_at_its_default_only(monkeypatch):
    import common.config

    config = {"seed": 0, "optimizer": {"name": "sgd", "lr": 0.1}}
    before = config_hash(config)
    monkeypatch.setitem(common.config.HASH_OMITTED_DEFAULTS, "optimizer.nesterov", False)
    snapshot = copy.deepcopy(config)
    with_default = {**config, "optimizer": {**config["optimizer"], "nesterov": False}}
    assert config_hash(with_default) == before
    assert without_omitted_defaults(with_default) == config and config == snapshot
    assert config_hash({**config, "optimizer": {**config["optimizer"], "nesterov": True}}) != before
    assert config_hash({**config, "optimizer": {**config["optimizer"], "nesterov": 0}}) != before   # not False
