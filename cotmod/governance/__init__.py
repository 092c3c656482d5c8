"""Change management: semantic policy diffs, the enforcement manifest, labeling guides, impact."""

from ._diff import Change, PolicyDiff, diff_policies, load_bundle
from ._guide import guide_fingerprint, guide_html, guide_markdown
from ._impact import impact
from ._sync import Finding, check_manifest, update_manifest

__all__ = [
    "Change",
    "Finding",
    "PolicyDiff",
    "check_manifest",
    "diff_policies",
    "guide_fingerprint",
    "guide_html",
    "guide_markdown",
    "impact",
    "load_bundle",
    "update_manifest",
]
