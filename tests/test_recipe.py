import pytest
from hypothesis import given, settings, strategies as st

from compactcl import CompactCLError
from compactcl.pipeline.recipe import apply_overrides, list_recipes, load_recipe


def test_default_and_builtins_validate():
    r = load_recipe(None)
    assert r.data.dataset == "digits" and r.data.tasks == 5 and r.data.classes_per_task == 2
    for name in list_recipes():
        assert load_recipe(name).name == name


def test_required_key_names_exist():
    r = load_recipe(None, ["seed=3", "data.dataset=digits", "data.root=/x", "data.tasks=2", "data.classes_per_task=5",
                           "model.backbone=mlp", "learner.name=lwf", "learner.epochs=1", "memory.size=50",
                           "memory.selection=random"])
    assert (r.seed, r.data.tasks, r.model.backbone, r.learner.name, r.memory.size) == (3, 2, "mlp", "lwf", 50)


def test_unknown_key_names_key_and_allowed_values():
    with pytest.raises(CompactCLError) as e:
        load_recipe(None, ["learner.epoch=3"])
    msg = str(e.value)
    assert "learner.epoch" in msg and "epochs" in msg


def test_wrong_type_and_negative_size():
    with pytest.raises(CompactCLError, match="learner.epochs"):
        load_recipe(None, ["learner.epochs=many"])
    with pytest.raises(CompactCLError, match="memory.size"):
        load_recipe(None, ["memory.size=-5"])


def test_unknown_learner_lists_allowed():
    with pytest.raises(CompactCLError) as e:
        load_recipe(None, ["learner.name=ewc"])
    assert "icarl" in str(e.value) and "der" in str(e.value)


def test_recipe_file_and_bad_yaml(tmp_path):
    good = tmp_path / "r.yaml"
    good.write_text("data: {dataset: digits, tasks: 2, classes_per_task: 5}\nlearner: {name: replay}\n")
    assert load_recipe(str(good)).learner.name == "replay"
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(CompactCLError, match="not valid YAML"):
        load_recipe(str(bad))
    with pytest.raises(CompactCLError, match="built-in recipes"):
        load_recipe("no-such-recipe")


def test_set_parses_yaml_values():
    raw = apply_overrides({}, ["a.b=3", "a.c=[1, 2]", "d=null"])
    assert raw == {"a": {"b": 3, "c": [1, 2]}, "d": None}
    with pytest.raises(CompactCLError, match="key=value"):
        apply_overrides({}, ["novalue"])


@settings(max_examples=60, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
                    max_leaves=10))
def test_any_yaml_document_gives_a_recipe_or_our_error(tmp_path_factory, doc):
    import yaml

    p = tmp_path_factory.mktemp("h") / "r.yaml"
    p.write_text(yaml.safe_dump(doc))
    try:
        load_recipe(str(p))
    except CompactCLError as e:
        assert str(e)


def test_alias_bomb_is_refused_without_expanding(tmp_path):
    # "Billion laughs": nine levels of ten aliases are 10^9 values once expanded (e.g. when the run
    # writes recipe.yaml). The size is computed on the shared structure, so this returns at once.
    lines = ["version: 1", "model:", "  options:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):
        lines.append(f"    l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(CompactCLError, match="aliases"):
        load_recipe(str(path))
    cyclic = tmp_path / "cycle.yaml"  # an alias to its own enclosing block
    cyclic.write_text("version: 1\nmodel: &m {options: {x: *m}}\n")
    with pytest.raises(CompactCLError, match="aliases"):
        load_recipe(str(cyclic))
    # a recipe that reuses a block by alias a few times is fine
    ok = tmp_path / "ok.yaml"
    ok.write_text("version: 1\ndata: &d {dataset: digits, tasks: 5}\nmodel: {backbone: cnn, options: {width: 8}}\n")
    assert load_recipe(str(ok)).model.options == {"width": 8}


def test_the_ladder_is_a_normal_recipe_of_measured_steps():
    r = load_recipe("ladder")
    assert r.data.tasks == 1 and r.learner.name == "finetune" and r.memory.size == 0
    assert r.compress.measure and [k for k, _ in r.compress.step_list()] == [
        "quantize", "prune", "distill", "prune", "quantize"]


def test_search_choices_must_leave_something_to_try():
    with pytest.raises(CompactCLError, match="bits: auto needs choices in 2..8 for method 'linear'"):
        load_recipe(None, ["compress.steps=[{quantize: {method: linear, bits: auto, choices: [1]}}]"])
    with pytest.raises(CompactCLError, match="bits: auto needs choices"):
        load_recipe(None, ["compress.steps=[{quantize: {method: kmeans, bits: auto, choices: []}}]"])
    with pytest.raises(CompactCLError, match=r"ratio: auto tries choices in \[0, 1\)"):
        load_recipe(None, ["compress.steps=[{prune: {ratio: auto, choices: [1.5, -2]}}]"])
