"""The model families, one `Family` object each, and the only place where a family's name decides anything.

    family = family_of_preset("stylegan3-t")          # from a preset name (TrainConfig.cfg)
    family = family_of_classes("FastGANGenerator", "ProjectedDiscriminator")   # from a run's network classes
    family.refused(cfg); family.network_kwargs(spec, 64, 3, 0); family.make_loss(parts, G_class, kwargs)
"""

from __future__ import annotations

from models.families.base import Family, Loss, LossParts
from models.families.projected import PROJECTED
from models.families.stylegan2 import STYLEGAN2
from models.families.stylegan3 import STYLEGAN3, stylegan3_batch_rules
from models.presets import PRESETS, Preset

FAMILIES: dict[str, Family] = {f.name: f for f in (STYLEGAN2, STYLEGAN3, PROJECTED)}


def family_of(spec: Preset) -> Family:
    """The family a preset row belongs to."""
    try:
        return FAMILIES[spec.family]
    except KeyError:
        raise ValueError(f"preset names an unknown family {spec.family!r}; known: {', '.join(FAMILIES)}") from None


def family_of_preset(name: str) -> Family:
    """The family of a preset name; ValueError for an unknown preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    return family_of(PRESETS[name])


def network_kwargs(spec: Preset, img_resolution: int, img_channels: int = 3, c_dim: int = 0
                   ) -> tuple[dict, dict]:
    """Constructor kwargs for (G, D) of a resolved preset, laid out like the official networks' init kwargs."""
    return family_of(spec).network_kwargs(spec, img_resolution, img_channels, c_dim)


def family_of_classes(G_class: str, D_class: str) -> Family:
    """The family of a run from its networks' snapshot-registry names (as in training_options.json)."""
    for family in FAMILIES.values():
        if G_class in family.generator_classes and D_class in family.discriminator_classes:
            return family
    raise ValueError(f"no model family trains {G_class} against {D_class}")


__all__ = ["FAMILIES", "Family", "Loss", "LossParts", "family_of", "family_of_classes", "family_of_preset",
           "network_kwargs", "stylegan3_batch_rules"]
