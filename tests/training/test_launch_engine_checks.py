"""The engine's config checks reach the launch form: a combination that cannot run is refused on its field (422)."""

from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User

from training.models import Run


@pytest.mark.parametrize(
    ("recipe", "data", "field", "message"),
    [
        ("sft", {"cfg_finetuning": "qlora", "cfg_device": "cpu"}, "cfg_finetuning", "needs a CUDA GPU"),
        (
            "dpo",
            {"cfg_batch_size": "16", "cfg_gradient_accumulation_steps": "3"},
            "cfg_gradient_accumulation_steps",
            "Must divide batch_size (16)",
        ),
        (
            "sft",
            {"cfg_finetuning": "lora", "cfg_lora_target_modules": "c_attn"},
            "cfg_lora_target_modules",
            "no module c_attn",
        ),
        (
            "grpo",
            {"cfg_finetuning": "lora", "cfg_rollout_backend": "vllm"},
            "cfg_rollout_backend",
            "Hugging Face backend",
        ),
    ],
    ids=["qlora-on-cpu", "accumulation-not-dividing", "lora-target-absent", "lora-with-vllm"],
)
def test_combination_that_cannot_run_is_refused_on_its_field(
    client_for: Any, researcher: User, recipe: str, data: dict[str, str], field: str, message: str
) -> None:
    response = client_for(researcher).post("/runs/new/", {"recipe": recipe, "queue": "gpu", **data})
    assert response.status_code == 422
    errors = response.context["form"].errors
    assert list(errors) == [field]
    assert message in errors[field][0]
    assert message in response.content.decode()  # shown on the page, next to the field
    assert not Run.objects.exists()


def test_lora_fields_sit_in_their_own_section_and_a_lora_run_launches(client_for: Any, researcher: User) -> None:
    client = client_for(researcher)
    page = client.get("/runs/new/", {"recipe": "dpo"}).content.decode()
    assert "LoRA / QLoRA adapters" in page and 'name="cfg_lora_r"' in page and "Fine-tuning" in page
    response = client.post(
        "/runs/new/",
        {"recipe": "dpo", "queue": "gpu", "cfg_finetuning": "lora", "cfg_gradient_accumulation_steps": "4"},
    )
    assert response.status_code in (302, 303)
    run = Run.objects.get()
    assert run.config["finetuning"] == "lora" and run.config["gradient_accumulation_steps"] == 4
