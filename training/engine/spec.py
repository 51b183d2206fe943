"""The run spec the supervisor writes for ``python -m training.engine SPEC.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from training.engine.config import RECIPES, BaseRecipeConfig


class RunSpec(BaseModel):
    """What to run, where to write it, and where to resume from."""

    model_config = ConfigDict(extra="forbid")

    run_id: int | None = Field(None, description="The platform's run id (None for a run started by hand).")
    recipe: str = Field(description="A key of training.engine.config.RECIPES.")
    config: dict[str, Any] = Field(default_factory=dict, description="The recipe's config, validated on load.")
    output_dir: str = Field(description="Absolute folder for checkpoints and the final model.")
    output_uri: str = Field(
        "", description="s3:// location of the run in the artifact store: checkpoints are uploaded there as written."
    )
    resume_from: str | None = Field(None, description="A checkpoint-<step> folder to resume from.")
    seed: int = Field(0, description="Seed of every random choice: init, data order, sampling.")

    @classmethod
    def load(cls, path: str | Path) -> RunSpec:
        """Read and validate a spec file (the recipe's config is validated too, so errors surface at start)."""
        spec = cls.model_validate(json.loads(Path(path).read_text(encoding="utf-8")))
        spec.recipe_config()
        return spec

    def recipe_config(self) -> BaseRecipeConfig:
        """The validated config object of this spec's recipe."""
        if self.recipe not in RECIPES:
            known = ", ".join(sorted(RECIPES))
            raise ValueError(f"unknown recipe {self.recipe!r}; known recipes: {known}")
        return RECIPES[self.recipe].config_cls.model_validate(self.config)

    def dump(self, path: str | Path) -> None:
        """Write this spec as JSON (what the supervisor does)."""
        Path(path).write_text(self.model_dump_json(indent=2), encoding="utf-8")
