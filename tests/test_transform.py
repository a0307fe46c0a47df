"""The generic adapter ``Transform``: schedules, params, recording by name, and what a config may name.

The shared operator contract (identity at 0, batching, oracle samplers ...) runs on Transforms through the
``Transform-*`` factories of tests/conftest.py; this file covers what is particular to the adapter.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import colddiff.degradations as cd
from colddiff._config import allowed_callables, build, describe
from colddiff.degradations.transform import get_transform
from colddiff.estimation import check_estimable
from tests.conftest import fade_to_grey, smooth_images

FADE = "tests.conftest.fade_to_grey"


def _double_shift(x: torch.Tensor, severity: torch.Tensor) -> torch.Tensor:
    return x + severity[:, None, None, None]


# ---------------------------------------------------------------------------------------------- schedules
def test_schedules_run_from_clean_to_end():
    linear = cd.Transform(4, fade_to_grey, clean=1.0, end=0.2)
    torch.testing.assert_close(linear.severity, torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2]))
    exponential = cd.Transform(3, "zoom", schedule="exponential", end=8.0)
    torch.testing.assert_close(exponential.severity, torch.tensor([1.0, 2.0, 4.0, 8.0]))
    given = cd.Transform(2, fade_to_grey, severities=[1.0, 0.9, 0.1])
    assert given.severity.tolist() == pytest.approx([1.0, 0.9, 0.1]) and given.schedule == "given"


def test_level_zero_is_the_input_even_where_the_function_is_not_the_identity():
    op = cd.Transform(3, _double_shift, clean=0.5, end=1.0, clamp=False)  # f(x, clean) = x + 0.5
    x0 = smooth_images()
    y = op(x0, torch.tensor([0, 1, 2, 3]))
    assert torch.equal(y[0], x0[0])
    torch.testing.assert_close(y[3], x0[3] + 1.0)
    assert bool((cd.Transform(3, _double_shift, clean=0.5, end=1.0)(x0, 3) <= 1).all())  # clamped by default


def test_a_batch_of_mixed_levels_is_one_call_with_one_severity_per_image():
    calls = []

    def spy(x, severity):
        calls.append(severity.clone())
        return x * severity[:, None, None, None]

    op = cd.Transform(4, spy, clean=1.0, end=0.0)
    op(smooth_images(), torch.tensor([0, 1, 2, 4]))
    assert len(calls) == 1
    torch.testing.assert_close(calls[0], torch.tensor([1.0, 0.75, 0.5, 0.0]))


def test_registered_defaults_and_ranges():
    op = cd.Transform(9, "jpeg")
    entry = get_transform("jpeg")
    assert op.severity[0].item() == entry.clean == 100.0 and op.severity[-1].item() == entry.end == 10.0
    with pytest.raises(ValueError, match=r"severities must lie in \[1, 100\].*got values in \[100, 120\]"):
        cd.Transform(4, "jpeg", end=120.0)
    with pytest.raises(ValueError, match="severities must lie in"):
        cd.JPEG(4, min_quality=0.5)
    assert set(cd.registered_transforms()) >= {"jpeg", "motion_blur", "defocus_blur", "rotate", "zoom", "posterize",
                                               "contrast", "elastic"}


# ---------------------------------------------------------------------------------------------- params
def test_random_params_are_drawn_once_and_seeded():
    op = cd.Transform(4, fade_to_grey, clean=1.0, end=0.0,
                      random={"grey": ["uniform", 0.2, 0.8]})
    x0 = smooth_images()
    a = op.make_params(x0, torch.Generator().manual_seed(3))
    b = op.make_params(x0, torch.Generator().manual_seed(3))
    assert op.param_keys == ("grey",) and torch.equal(a["grey"], b["grey"])
    assert bool(((a["grey"] >= 0.2) & (a["grey"] <= 0.8)).all())
    torch.testing.assert_close(op(x0, 4, a), a["grey"][:, None, None, None].expand_as(x0))
    choice = cd.Transform(4, "rotate", random={"sign": ["choice", -1.0, 1.0]}).make_params(
        torch.rand(64, 1, 4, 4), torch.Generator().manual_seed(0))["sign"]
    assert set(choice.tolist()) == {-1.0, 1.0}
    normal = cd.Transform(4, "rotate", random={"sign": ["normal", 1.0, 0.0]}).make_params(x0)["sign"]
    assert normal.tolist() == [1.0] * 4


def test_what_a_given_image_does_not_reveal_is_said():
    deterministic = cd.Transform(4, fade_to_grey, clean=1.0, end=0.0, options={"grey": 0.3})
    assert deterministic.unknown_params_reason() is None
    check_estimable(deterministic)
    random = cd.Transform(4, fade_to_grey, clean=1.0, end=0.0, random={"grey": ["uniform", 0.2, 0.8]})
    assert "grey ~ uniform[0.2, 0.8]" in random.unknown_params_reason()
    with pytest.raises(ValueError, match="drawn at random per image"):
        check_estimable(random)
    assert "field" in cd.Transform(4, "elastic").unknown_params_reason()


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"schedule": "cosine"}, ValueError, "schedule must be 'linear' or 'exponential'"),
    ({"severities": [1.0, 0.5]}, ValueError, r"one value per level, level 0 included \(5 values\), got 2"),
    ({"clean": 0.0, "schedule": "exponential"}, ValueError, "non-zero and of the same sign"),
    ({"options": {"grey": [0.5]}}, TypeError, r"options\['grey'\] must be a bool, int, float or str"),
    ({"random": {"grey": ["poisson", 1.0]}}, ValueError, "distribution one of"),
    ({"random": {"grey": ["uniform", 0.8, 0.2]}}, ValueError, "low <= high"),
    ({"random": {"grey": ["choice"]}}, ValueError, "at least one value"),
    ({"options": {"grey": 0.5}, "random": {"grey": ["uniform", 0.2, 0.8]}}, ValueError, "given twice"),
])
def test_bad_arguments_are_refused_with_what_was_expected(kwargs, error, match):
    args = {"clean": 1.0, "end": 0.0, **kwargs}
    with pytest.raises(error, match=match):
        cd.Transform(4, fade_to_grey, **args)


def test_a_function_that_changes_the_shape_is_refused():
    op = cd.Transform(3, lambda x, s: x[..., :-1], clean=0.0, end=1.0)
    with pytest.raises(ValueError, match=r"must return images of the input's shape \(4, 3, 32, 32\), got "
                                         r"\(4, 3, 32, 31\)"):
        op(smooth_images(), 1)


def test_half_precision_images_are_transformed_in_float32():
    op = cd.Transform(3, "jpeg")
    x0 = smooth_images().bfloat16()
    y = op(x0, 2)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), op(x0.float(), 2).bfloat16().float())


# ---------------------------------------------------------------------------------------------- registry
def test_register_transform_as_a_decorator_and_its_checks():
    @cd.register_transform("test_fade_decorated", clean=1.0, end=0.0, description="a test fade")
    def faded(x, severity):
        return x * severity[:, None, None, None]

    try:
        op = cd.Transform(2, "test_fade_decorated")
        assert op.function is faded and op.function_name == "test_fade_decorated"
        assert describe(op)["init_args"]["function"] == "test_fade_decorated"
        with pytest.raises(ValueError, match="already registered"):
            cd.register_transform("test_fade_decorated", fade_to_grey, clean=1.0, end=0.0)
        cd.register_transform("test_fade_decorated", fade_to_grey, clean=1.0, end=0.0, replace=True)
        assert cd.Transform(2, "test_fade_decorated").function is fade_to_grey
    finally:
        from colddiff.degradations import transform

        transform._REGISTRY.pop("test_fade_decorated", None)
    with pytest.raises(ValueError, match="identifier without dots"):
        cd.register_transform("my.fade", fade_to_grey, clean=1.0, end=0.0)
    with pytest.raises(ValueError, match="unknown transform 'no_such_thing'.*'jpeg'"):
        cd.Transform(2, "no_such_thing")


# ---------------------------------------------------------------------------------------------- configs
def test_a_registered_function_is_recorded_and_rebuilt_by_name():
    op = cd.Transform(4, cd.registered_transforms()["jpeg"].function, end=20.0)  # given as the object itself
    config = describe(op)
    assert config["class_path"] == "colddiff.degradations.transform.Transform"
    assert config["init_args"]["function"] == "jpeg"
    rebuilt = build(config, "degradation")
    x0 = smooth_images()
    assert torch.equal(rebuilt(x0, torch.tensor([0, 1, 3, 4])), op(x0, torch.tensor([0, 1, 3, 4])))
    jpeg = describe(cd.JPEG(4, min_quality=20.0))  # the kornia operators record their own arguments
    assert jpeg["class_path"] == "colddiff.degradations.kornia_ops.JPEG" and "function" not in jpeg["init_args"]


def test_your_own_function_is_recorded_by_path_and_rebuilt_only_if_you_allow_it():
    op = cd.Transform(4, fade_to_grey, clean=1.0, end=0.0)
    config = describe(op)
    assert config["init_args"]["function"] == FADE
    with pytest.raises(ValueError, match=rf"refusing to import '{FADE}' from a config"):
        build(config, "degradation")
    x0 = smooth_images()
    assert torch.equal(build(config, "degradation", allow=[FADE])(x0, 2), op(x0, 2))
    with allowed_callables([FADE]):
        assert cd.Transform(4, FADE, clean=1.0, end=0.0).function is fade_to_grey
    with pytest.raises(ValueError, match="refusing to import"):  # the context is closed again
        cd.Transform(4, FADE, clean=1.0, end=0.0)
    with pytest.raises(TypeError, match="cannot describe"):  # a lambda cannot be recorded
        describe(cd.Transform(4, lambda x, s: x, clean=0.0, end=1.0))


@pytest.mark.parametrize("path", ["os.system", "builtins.eval", "subprocess.call", "posix.system"])
def test_a_config_naming_a_dangerous_callable_is_refused(path):
    config = {"class_path": "colddiff.degradations.Transform",
              "init_args": {"num_steps": 4, "function": path, "clean": 0.0, "end": 1.0,
                            "options": {"command": "echo pwned"}}}
    with pytest.raises(ValueError, match=rf"refusing to import '{path}' from a config: only colddiff's registered "
                                         r"transforms \(contrast, defocus_blur, elastic, jpeg"):
        build(config, "degradation")
    with pytest.raises(ValueError, match="refusing to import"):
        cd.Transform(4, path, clean=0.0, end=1.0)


def test_a_refused_function_path_is_never_imported(tmp_path):
    """In a fresh interpreter: a config naming a function in a module with import side effects refuses it on the
    string: the module is never imported (it would write a marker file) and nothing is called."""
    marker = tmp_path / "imported"
    (tmp_path / "sneaky_module.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef run(x, s):\n    return x\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from colddiff._config import build
        config = {{"class_path": "colddiff.degradations.Transform",
                  "init_args": {{"num_steps": 3, "function": "sneaky_module.run", "clean": 0.0, "end": 1.0}}}}
        try:
            build(config, "degradation")
        except ValueError as err:
            print("refused" if "refusing to import 'sneaky_module.run'" in str(err) else err)
        print("sneaky_module" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["refused", "False"], result.stdout + result.stderr
    assert not marker.exists()
