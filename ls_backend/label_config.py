"""The parts of a Label Studio labeling config the backend uses, parsed with the SDK."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from label_studio_sdk.label_interface import LabelInterface


class LabelConfigError(ValueError):
    """A labeling config the backend cannot work with; the message says how to fix it."""


@dataclass(frozen=True)
class LabelConfig:
    """The brush output tag and the image it labels.

    Attributes:
        brush_from: ``name`` of the ``<BrushLabels>`` tag results are written to.
        image_to: ``name`` of the ``<Image>`` tag it points to.
        image_key: task data field holding the image URL (``$image`` -> ``image``).
        labels: the brush labels, in config order.
        smart_tools: ``from_name`` -> kind (``keypoints`` or ``rectangle``) of the
            KeyPointLabels / RectangleLabels tags on the same image.
        polygon_from: ``name`` of a ``<PolygonLabels>`` tag on the same image, if any:
            every brush result is then also returned as polygons of that tag.
        smart_problems: one message per smart tool (``smart="true"`` on the tag or on one
            of its labels) with labels that are not brush labels: a click with such a
            label cannot become a mask.  ``/setup`` refuses the config with them.
    """

    brush_from: str
    image_to: str
    image_key: str
    labels: tuple[str, ...]
    smart_tools: tuple[tuple[str, str], ...] = ()
    polygon_from: str | None = None
    smart_problems: tuple[str, ...] = ()

    def check_smart_tools(self) -> None:
        """Raise ``LabelConfigError`` naming every smart tool whose labels are not brush
        labels (what ``/setup`` reports; Label Studio shows it on the Model settings page,
        as HTML: so the message holds no angle brackets)."""
        if self.smart_problems:
            raise LabelConfigError(
                "; ".join(self.smart_problems)
                + ". Give the smart tools the same Label values as the BrushLabels tool "
                f'"{self.brush_from}": {", ".join(self.labels)}'
            )


#: Largest labeling config parsed (real ones are a few KB; the SDK takes ~0.7 s per MB).
MAX_CONFIG_CHARS = 2**20
#: Parsed configs kept (one per project in use); with the size bound, at most ~70 MB.
CONFIGS_KEPT = 16


def parse_label_config(config: str) -> LabelConfig:
    """Find the BrushLabels output and the smart tools of a labeling config.

    Raises:
        LabelConfigError: empty, longer than :data:`MAX_CONFIG_CHARS`, not valid XML, or
            no ``<BrushLabels>`` on an ``<Image>``.
    """
    if not isinstance(config, str) or not config.strip():
        raise LabelConfigError("the labeling config is empty")
    if len(config) > MAX_CONFIG_CHARS:
        raise LabelConfigError(
            f"the labeling config has {len(config)} characters; the backend parses at most "
            f"{MAX_CONFIG_CHARS}"
        )
    return _parse(config)


@lru_cache(maxsize=CONFIGS_KEPT)
def _parse(config: str) -> LabelConfig:
    try:
        interface = LabelInterface(config)
    except Exception as exc:  # the SDK raises lxml, KeyError or its own errors
        raise LabelConfigError(f"cannot parse the labeling config: {exc}") from exc
    images = {o.name: o for o in interface.objects if o.tag.lower() == "image"}
    brushes = [
        c for c in interface.controls if c.tag.lower() == "brushlabels" and c.to_name[0] in images
    ]
    if not brushes:
        raise LabelConfigError(
            "the labeling config has no <BrushLabels> on an <Image>; this backend writes brush "
            'masks, add e.g. <BrushLabels name="brush" toName="image"><Label value="Cat"/>'
            "</BrushLabels>"
        )
    brush = brushes[0]
    if not brush.labels:
        raise LabelConfigError(f'<BrushLabels name="{brush.name}"> has no <Label> children')
    image = images[brush.to_name[0]]
    kinds = {"keypointlabels": "keypoints", "rectanglelabels": "rectangle"}
    smart = tuple(
        (c.name, kinds[c.tag.lower()])
        for c in interface.controls
        if c.tag.lower() in kinds and c.to_name[0] == image.name
    )

    def is_smart(c) -> bool:
        labels = (getattr(c, "labels_attrs", None) or {}).values()
        return any(
            str(a.get(k, "")).lower() == "true"
            for a in (c.attr, *(getattr(v, "attr", None) for v in labels))
            if isinstance(a, dict)
            for k in ("smart", "smartOnly")
        )

    problems = tuple(
        f'The smart {c.tag} tool "{c.name}" has labels '
        + ", ".join(map(repr, bad))
        + " that are not brush labels"
        for c in interface.controls
        if c.tag.lower() in kinds and c.to_name[0] == image.name and is_smart(c)
        for bad in [[v for v in c.labels if v not in brush.labels]]
        if bad
    )
    polygons = [
        c.name
        for c in interface.controls
        if c.tag.lower() == "polygonlabels" and c.to_name[0] == image.name
    ]
    return LabelConfig(
        polygon_from=polygons[0] if polygons else None,
        brush_from=brush.name,
        image_to=image.name,
        image_key=image.value.lstrip("$"),
        labels=tuple(brush.labels),
        smart_tools=smart,
        smart_problems=problems,
    )
