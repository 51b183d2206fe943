"""Launch-form sections and labels, config tables marked against recipe defaults, the run list's columns."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import Field

from arbiter.accounts.models import User
from training.engine.config import RECIPES, DemoConfig, RecipeInfo
from training.forms import SECTIONS, LaunchForm, field_label
from training.models import MetricKey, MetricSummary, Run

pytestmark = pytest.mark.django_db


def _sections_html(html: str) -> dict[str, str]:
    """{section key: the HTML of that <details>} of a rendered launch form."""
    parts = re.findall(
        r'<details class="card form-section[^"]*" data-section="([a-z_]+)"[^>]*>(.*?)</details>', html, re.S
    )
    return dict(parts)


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_config_field_of_every_recipe_appears_exactly_once(
    client_for: Any, researcher: User, recipe: str
) -> None:
    html = client_for(researcher).get("/runs/new/", {"recipe": recipe}).content.decode()
    sections = _sections_html(html)
    fields = list(RECIPES[recipe].config_cls.model_fields)
    for name in fields:
        # Once on the page, and inside exactly one section.
        assert html.count(f'id="field-cfg_{name}"') == 1, name
        assert sum(f'id="field-cfg_{name}"' in body for body in sections.values()) == 1, name
    rendered = re.findall(r'id="field-cfg_([a-z0-9_]+)"', html)
    assert sorted(rendered) == sorted(fields)  # nothing extra, nothing twice
    for name in ("name", "queue", "tags", "shared"):
        assert f'id="field-{name}"' in sections["run"]
    assert list(sections) == [k for k in SECTIONS if k in sections]  # sections in their fixed order


def test_grpo_form_groups_fields_under_research_headings(client_for: Any, researcher: User) -> None:
    html = client_for(researcher).get("/runs/new/", {"recipe": "grpo"}).content.decode()
    sections = _sections_html(html)
    expect = {
        "optim": ["max_steps", "batch_size", "learning_rate", "lr_scheduler", "warmup_steps", "weight_decay"],
        "generation": ["num_generations", "max_new_tokens", "temperature", "top_p"],
        "variant": ["variant", "gtpo_conflict_boost", "gtpo_entropy_threshold", "gtpo_entropy_penalty"],
        "rewards": ["reward_funcs", "reward_weights", "reward_regex"],
        "hardware": ["device", "dtype", "num_threads", "gradient_checkpointing", "vllm_gpu_memory_utilization"],
    }
    for section, names in expect.items():
        order = [m for m in re.findall(r'id="field-cfg_([a-z0-9_]+)"', sections[section]) if m in names]
        assert order == names, section
    for title in ("Model &amp; data", "Optimisation", "Generation", "Loss", "Variant (GTPO / GRPO-Guard)", "Rewards"):
        assert f"<h2>{title}</h2>" in html
    for label in ("Learning rate", "LR scheduler", "GTPO conflict boost", "KL coefficient (β)", "vLLM GPU memory"):
        assert label in html
    assert "Lr Scheduler" not in html and "Vllm" not in html
    # The reward functions are tick boxes with the recipe default ticked (a default_factory list).
    assert re.search(r'<input type="checkbox" name="cfg_reward_funcs" value="numeric_answer"[^>]*checked', html)


def test_rare_sections_are_collapsed_unless_they_hold_an_error(client_for: Any, researcher: User) -> None:
    client = client_for(researcher)
    page = client.get("/runs/new/", {"recipe": "demo"}).content.decode()
    opened = dict(re.findall(r'<details class="card form-section[^"]*" data-section="([a-z_]+)"\s*(open)?>', page))
    assert opened["hardware"] == "" and opened["checkpoints"] == ""
    assert opened["run"] == "open" and opened["optim"] == "open" and opened["demo"] == "open"

    response = client.post("/runs/new/", {"recipe": "demo", "queue": "gpu", "cfg_num_threads": "-1"})
    assert response.status_code == 422
    html = response.content.decode()
    assert re.search(r'data-section="hardware"\s*open', html)
    assert re.search(r'data-section="checkpoints"\s*>', html)  # still folded: no error there
    assert "greater than or equal to 0" in _sections_html(html)["hardware"]
    assert not Run.objects.exists()


def test_a_field_the_mapping_does_not_know_still_appears_under_other_settings(
    client_for: Any, researcher: User, monkeypatch: Any
) -> None:
    class NewKnobConfig(DemoConfig):
        brand_new_knob: float = Field(0.5, ge=0, le=1, description="Added by the engine after the UI was written.")

    monkeypatch.setitem(
        RECIPES, "new_knob", RecipeInfo("new_knob", "New knob", "A recipe from the future.", NewKnobConfig)
    )
    html = client_for(researcher).get("/runs/new/", {"recipe": "new_knob"}).content.decode()
    other = _sections_html(html)["other"]
    assert 'id="field-cfg_brand_new_knob"' in other and "Brand new knob" in other
    assert "Other settings" in html


def test_launch_with_ticked_reward_functions(client_for: Any, researcher: User) -> None:
    response = client_for(researcher).post(
        "/runs/new/",
        {"recipe": "grpo", "queue": "gpu", "cfg_reward_funcs": ["exact_match", "format"], "cfg_max_steps": "3"},
    )
    assert response.status_code == 302
    assert Run.objects.get().config["reward_funcs"] == ["exact_match", "format"]


def test_labels_keep_acronyms() -> None:
    assert field_label("gtpo_conflict_boost") == "GTPO conflict boost"
    assert field_label("kl_target_gpu_fraction") == "KL target GPU fraction"
    assert field_label("vllm_tensor_parallel_size") == "vLLM tensor parallel size"
    assert field_label("learning_rate") == "Learning rate"
    assert field_label("max_steps") == "Max steps"


def test_form_sections_hold_every_form_field_once() -> None:
    for recipe in RECIPES:
        form = LaunchForm(recipe=recipe)
        names = [f.html_name for s in form.sections() for f in s.fields]
        assert sorted(names) == sorted(form.fields), recipe


def _grpo_config(**changes: Any) -> dict[str, Any]:
    return RECIPES["grpo"].config_cls.model_validate(changes).model_dump(mode="json")


def test_run_config_marks_values_that_differ_from_the_recipe_defaults(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    run = make_run(
        researcher, recipe="grpo", config=_grpo_config(learning_rate=1e-6, variant="gtpo", scale_rewards="none")
    )
    html = client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    rows = {key: cls for cls, key in re.findall(r'<tr class="(differs)?" data-key="([a-z0-9_]+)">', html)}
    assert rows["learning_rate"] == "differs" and rows["variant"] == "differs"
    assert rows["max_steps"] == "" and rows["beta"] == "" and rows["reward_funcs"] == ""
    assert sorted(rows) == sorted(run.config)  # every key once, as written
    assert "default 1e-05" in html  # the recipe default next to the changed value
    # Keys are shown as written, grouped like the form.
    sections = re.findall(r'<tbody data-section="([a-z_]+)"', html)
    assert sections[:3] == ["model", "optim", "generation"] and "hardware" in sections


def test_external_run_config_has_no_defaults_to_differ_from(client_for: Any, researcher: User) -> None:
    from training.services import runs

    run, _ = runs.create_external_run(owner=researcher, name="script", config={"lr": 0.1, "learning_rate": 3})
    html = client_for(researcher).get(f"/runs/{run.id}/").content.decode()
    assert 'data-key="lr"' in html and 'data-key="learning_rate"' in html
    assert 'class="differs"' not in html and "recipe's default" not in html


def test_compare_can_show_every_field_with_the_differing_ones_marked(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    a = make_run(researcher, recipe="grpo", config=_grpo_config(learning_rate=1e-6))
    b = make_run(researcher, recipe="grpo", config=_grpo_config(learning_rate=2e-6))
    client = client_for(researcher)
    only = client.get("/runs/compare/", {"runs": f"{a.id},{b.id}"}).content.decode()
    assert re.findall(r'data-key="([a-z0-9_]+)"', only) == ["learning_rate"]
    full = client.get("/runs/compare/", {"runs": f"{a.id},{b.id}", "all": "1", "part": "diff"}, HTTP_HX_REQUEST="true")
    html = full.content.decode()
    assert html.lstrip().startswith('<section class="card" id="config-diff-card"')
    rows = {key: cls for cls, key in re.findall(r'<tr class="(differs)?" data-key="([a-z0-9_]+)">', html)}
    assert sorted(rows) == sorted(a.config) and rows["learning_rate"] == "differs" and rows["max_steps"] == ""


def _summary(run: Run, key: str, value: float) -> None:
    k, _ = MetricKey.objects.get_or_create(name=key)
    MetricSummary.objects.create(
        run=run, key=k, n=1, last_step=1, last_value=value, last_time=0, min_value=value, max_value=value
    )


def test_run_list_shows_duration_and_final_metric_columns(client_for: Any, researcher: User, make_run: Any) -> None:
    run = make_run(researcher, started_at="2026-01-01T00:00Z", finished_at="2026-01-01T01:02:03Z")
    _summary(run, "loss", 0.123456)
    _summary(run, "reward", 0.5)
    _summary(run, "grad_norm", 2.0)
    client = client_for(researcher)
    html = client.get("/runs/").content.decode()
    assert "1 h 02 min" in html
    assert '<th class="num metric-col" title="final value of loss">loss</th>' in html and ">0.1235<" in html
    assert "final value of grad_norm" not in html  # not a default column...
    picked = client.get("/runs/", {"cols_set": "1", "cols": ["grad_norm"]}).content.decode()
    assert "final value of grad_norm" in picked and "final value of loss" not in picked  # ...until picked


def test_empty_run_list_invites_a_first_run_and_filtered_one_offers_to_clear(
    client_for: Any, researcher: User, make_run: Any
) -> None:
    client = client_for(researcher)
    html = client.get("/runs/").content.decode()
    assert "No runs yet" in html and 'id="empty-new-run" href="/runs/new/"' in html
    make_run(researcher, name="x")
    html = client.get("/runs/", {"q": "nothing-like-it"}).content.decode()
    assert "No runs match these filters" in html and "empty-new-run" not in html
