"""Choosing the coder and its effort for the link the box has now.

On a thin link the CPU waits for the link, so a slower, stronger coder delivers
sooner; on a fast link it makes the link wait. The box packs while it sends, so a
study's delivery time is about ``max(encode time, coded bytes / link rate)`` plus the
time to code the first instance (the pipeline filling). ``choose`` picks the profile
with the least such time from figures the caller measured (its own CPU, its link).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str  # e.g. "zstd-3", "dicom-jxl-3"
    ratio: float  # input bytes / coded bytes, measured on this kind of study
    encode_bytes_per_s: float  # input bytes per second on this box, one core
    level: int = 3
    pixel_effort: int | None = None  # None: plain zstd


def delivery_seconds(
    p: Profile, payload_bytes: int, link_bytes_per_s: float, first_instance_bytes: int = 0
) -> float:
    encode = payload_bytes / p.encode_bytes_per_s
    send = payload_bytes / p.ratio / link_bytes_per_s
    fill = first_instance_bytes / p.encode_bytes_per_s
    return max(encode, send) + fill


def choose(
    profiles: list[Profile],
    payload_bytes: int,
    link_bytes_per_s: float,
    first_instance_bytes: int = 0,
) -> Profile:
    """The profile that delivers ``payload_bytes`` soonest over this link."""
    if not profiles:
        raise ValueError("no profiles to choose from")
    return min(
        profiles,
        key=lambda p: (
            delivery_seconds(p, payload_bytes, link_bytes_per_s, first_instance_bytes),
            -p.ratio,
        ),
    )
