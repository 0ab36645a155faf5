"""The attacks by name: what exists, what each attacker knows, and which a scale affords.

Chapter 1 (threat models) introduces them; the command line's ``--attacks`` and the grid's
``attacks:`` are checked here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from mcmia_helpers.errors import UserError

if TYPE_CHECKING:
    from mcmia_helpers.scales import ArchScale

SHADOW_ATTACKS = ("shadow_top3", "shadow_label")
METRIC_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy", "correctness")
LIRA_ATTACKS = ("lira_online", "lira_offline")
#: RMIA (Zarifzadeh et al. 2024) uses LiRA's shadow models as its reference models.
RMIA_ATTACKS = ("rmia_online", "rmia_offline")
#: The attacks that need reference (LiRA) models, plain or defence-aware.
REFERENCE_ATTACKS = LIRA_ATTACKS + RMIA_ATTACKS
DEFENCE_AWARE_ATTACKS = ("lira_online_aware", "lira_offline_aware", "rmia_online_aware",
                         "rmia_offline_aware")
ATTACKS: tuple[str, ...] = (SHADOW_ATTACKS + ("nasr_inference",) + METRIC_ATTACKS + LIRA_ATTACKS
                            + RMIA_ATTACKS + DEFENCE_AWARE_ATTACKS)

#: What each attacker knows besides black-box access to the target's softmax output.
THREAT_MODELS: dict[str, str] = {
    "shadow_top3": "data from the target's distribution (shadow pool), the architecture and training "
                   "recipe; attack network trained on shadow models' sorted top-3 posteriors",
    "shadow_label": "as shadow_top3, plus the true label of each query",
    "nasr_inference": "half of the target's members (known members) and reference non-members from "
                      "the same distribution; evaluated on the other half of the members",
    "loss": "the true label of each query; threshold calibrated on shadow models",
    "confidence": "nothing else (label-free); threshold calibrated on shadow models",
    "entropy": "nothing else (label-free); threshold calibrated on shadow models",
    "modified_entropy": "the true label of each query; threshold calibrated on shadow models",
    "correctness": "the true label of each query; threshold calibrated on shadow models",
    "lira_online": "the candidate set (members and non-members, not which is which), the architecture "
                   "and training recipe; shadow models trained on random halves of the candidates",
    "lira_offline": "as lira_online, but uses only shadow models that did not train on the query",
    "rmia_online": "as lira_online (its shadow models are RMIA's reference models), plus population "
                   "samples z from the target's distribution that the attacker holds (the shadow pool; "
                   "in a zoo the other pool examples) and their true labels",
    "rmia_offline": "as rmia_online, but uses only reference models that did not train on the query",
    "lira_online_aware": "as lira_online, plus the target's defence and its parameters: every shadow "
                         "model is trained with that defence (e.g. pruned to the same sparsity)",
    "lira_offline_aware": "as lira_offline, with shadow models trained with the target's defence",
    "rmia_online_aware": "as rmia_online, with reference models trained with the target's defence",
    "rmia_offline_aware": "as rmia_offline, with reference models trained with the target's defence",
}

#: The name a reader sees in tables, figures and prose for each attack (the code's names stay in
#: the command line and the records).
PLAIN_NAMES: dict[str, str] = {
    "shadow_top3": "shadow-model attack (top-3 posteriors)",
    "shadow_label": "shadow-model attack (with labels)",
    "nasr_inference": "Nasr's inference attack",
    "loss": "loss threshold",
    "confidence": "confidence threshold",
    "entropy": "entropy threshold",
    "modified_entropy": "modified-entropy threshold",
    "correctness": "correctness",
    "lira_online": "LiRA online",
    "lira_offline": "LiRA offline",
    "rmia_online": "RMIA online",
    "rmia_offline": "RMIA offline",
    "lira_online_aware": "LiRA online, defence-aware",
    "lira_offline_aware": "LiRA offline, defence-aware",
    "rmia_online_aware": "RMIA online, defence-aware",
    "rmia_offline_aware": "RMIA offline, defence-aware",
}


def plain_name(attack: str) -> str:
    """The reader's name of ``attack`` (:data:`PLAIN_NAMES`); an unknown name is returned as is."""
    return PLAIN_NAMES.get(attack, attack)


def aware_form(attack: str) -> str:
    """The defence-aware form of a reference-model attack (``rmia_offline`` ->
    ``rmia_offline_aware``); other attacks, and aware names, are returned unchanged."""
    return f"{attack}_aware" if attack in REFERENCE_ATTACKS else attack


# --------------------------------------------------------------------------- names


def validate_attack_names(names: str | Iterable[str] | None) -> tuple[str, ...]:
    """Attack names as a tuple (a string is split on commas); unknown names raise a UserError."""
    if names is None:
        return ATTACKS
    if isinstance(names, str):
        names = [n for n in (s.strip() for s in names.split(",")) if n]
    names = tuple(dict.fromkeys(names))
    unknown = [n for n in names if n not in ATTACKS]
    if unknown:
        raise UserError(f"unknown attack(s) {', '.join(map(repr, unknown))}: choose from "
                        f"{', '.join(ATTACKS)}")
    if not names:
        raise UserError(f"no attack named: choose from {', '.join(ATTACKS)}")
    return names


def default_attacks(scale: ArchScale) -> tuple[str, ...]:
    """Every attack the scale affords: shadow-model attacks need ``n_shadow_models >= 1``, LiRA
    and RMIA need ``n_lira_models >= 2`` (one IN and one OUT model per example). The
    defence-aware attacks are never defaults (they repeat the defended training
    ``n_lira_models`` times)."""
    out = []
    for name in ATTACKS:
        if name in DEFENCE_AWARE_ATTACKS:
            continue
        if name in SHADOW_ATTACKS + METRIC_ATTACKS and scale.n_shadow_models < 1:
            continue
        if name in REFERENCE_ATTACKS and scale.n_lira_models < 2:
            continue
        out.append(name)
    return tuple(out)
