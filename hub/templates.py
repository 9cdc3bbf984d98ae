"""Report templates per modality and body part: where a radiologist starts a draft.

Keyed by (modality, body part) as DICOM names them (BodyPartExamined); a modality
alone gives its general template, and anything else the plain one. Add a clinic's own
by adding entries here.
"""

from __future__ import annotations

PLAIN = {"findings": "", "impression": ""}

TEMPLATES: dict[tuple[str, str], dict[str, str]] = {
    ("CT", "HEAD"): {
        "findings": (
            "Brain parenchyma: \nGrey-white differentiation: \nVentricles and sulci: \n"
            "Extra-axial spaces (subdural, epidural): \nHaemorrhage: \nMidline shift: \n"
            "Posterior fossa: \nCalvarium and skull base: \nSinuses and mastoids: "
        ),
        "impression": "",
    },
    ("CT", "CHEST"): {
        "findings": (
            "Lungs and airways: \nPleura: \nMediastinum and hila: \nHeart and pericardium: \n"
            "Vessels: \nChest wall and bones: \nUpper abdomen: "
        ),
        "impression": "",
    },
    ("CT", "ABDOMEN"): {
        "findings": (
            "Liver: \nGallbladder and bile ducts: \nPancreas: \nSpleen: \nAdrenals: \n"
            "Kidneys and ureters: \nBowel: \nPeritoneum and free fluid: \nVessels and nodes: \n"
            "Bones: "
        ),
        "impression": "",
    },
    ("CR", "CHEST"): {
        "findings": (
            "Technique: \nLungs: \nPleura: \nHeart size: \nMediastinum: \nBones and soft tissues: "
        ),
        "impression": "",
    },
    ("MR", "BRAIN"): {
        "findings": (
            "Parenchyma: \nDiffusion: \nSusceptibility: \nVentricles: \nExtra-axial spaces: \n"
            "Enhancement: \nVessels (flow voids): "
        ),
        "impression": "",
    },
    ("MR", "SPINE"): {
        "findings": (
            "Alignment: \nVertebral bodies and marrow: \nDiscs (level by level): \n"
            "Spinal canal and cord: \nExit foramina: \nParaspinal soft tissues: "
        ),
        "impression": "",
    },
    ("MR", "KNEE"): {
        "findings": (
            "Menisci: \nCruciate ligaments: \nCollateral ligaments: \nExtensor mechanism: \n"
            "Cartilage: \nBone marrow: \nEffusion: "
        ),
        "impression": "",
    },
    ("US", "ABDOMEN"): {
        "findings": (
            "Liver: \nGallbladder: \nCommon bile duct: \nPancreas: \nSpleen: \nKidneys: \n"
            "Free fluid: "
        ),
        "impression": "",
    },
    ("CT", ""): {"findings": "Technique: \nFindings: ", "impression": ""},
    ("MR", ""): {"findings": "Sequences: \nFindings: ", "impression": ""},
    ("CR", ""): {"findings": "Views: \nFindings: ", "impression": ""},
    ("US", ""): {"findings": "Findings: ", "impression": ""},
}
TEMPLATES[("DX", "CHEST")] = TEMPLATES[("CR", "CHEST")]
TEMPLATES[("DX", "")] = TEMPLATES[("CR", "")]
TEMPLATES[("MR", "HEAD")] = TEMPLATES[("MR", "BRAIN")]


def template(modality: str, body_part: str = "") -> dict[str, str]:
    m, b = modality.strip().upper(), body_part.strip().upper()
    return dict(TEMPLATES.get((m, b)) or TEMPLATES.get((m, "")) or PLAIN)
