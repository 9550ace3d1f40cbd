"""Model-written SVG, made inert before it is stored.

The model's text is parsed by defusedxml with DTDs, entities and external references all
forbidden (no entity expansion, no XXE), then rebuilt from an allow-list: drawing elements
and presentation attributes only. Everything else is dropped with its subtree: scripts,
`foreignObject`, `style` elements, links, images, animation (`animate`/`set` can rewrite an
href to `javascript:`), and every attribute not on the list (so every `on*` handler).
References may only point inside the document (`href="#id"`, `url(#id)`); a `style`
attribute survives only without `url(`, `@import`, `expression(` or escapes. The result is
serialised by this module, never by echoing the input.

The file is also served with a CSP that forbids scripts and external loads (web/), so a
mistake here is a second line, not the only one.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

SVG_NS = "http://www.w3.org/2000/svg"
XLINK_NS = "http://www.w3.org/1999/xlink"
MAX_SVG_BYTES = 256 * 1024
MAX_ELEMENTS = 5000
MAX_DEPTH = 64

ELEMENTS = frozenset(
    {
        "svg", "g", "defs", "title", "desc", "symbol", "use", "path", "rect", "circle",
        "ellipse", "line", "polyline", "polygon", "text", "tspan", "marker",
        "linearGradient", "radialGradient", "stop", "clipPath", "mask", "pattern",
    }
)  # fmt: skip
TEXT_ELEMENTS = frozenset({"title", "desc", "text", "tspan"})
ATTRIBUTES = frozenset(
    {
        "id", "class", "x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "rx", "ry", "fx",
        "fy", "width", "height", "viewBox", "preserveAspectRatio", "d", "points",
        "pathLength", "transform", "fill", "fill-opacity", "fill-rule", "stroke",
        "stroke-width", "stroke-opacity", "stroke-linecap", "stroke-linejoin",
        "stroke-dasharray", "stroke-dashoffset", "stroke-miterlimit", "opacity", "color",
        "clip-path", "clip-rule", "mask", "font-family", "font-size", "font-weight",
        "font-style", "text-anchor", "dominant-baseline", "alignment-baseline",
        "letter-spacing", "dx", "dy", "rotate", "textLength", "offset", "stop-color",
        "stop-opacity", "gradientUnits", "gradientTransform", "spreadMethod",
        "patternUnits", "patternTransform", "patternContentUnits", "clipPathUnits",
        "maskUnits", "maskContentUnits", "markerWidth", "markerHeight", "markerUnits",
        "refX", "refY", "orient", "marker-start", "marker-mid", "marker-end", "style",
        "version", "role", "aria-label", "aria-hidden", "visibility", "display",
    }
)  # fmt: skip
_LOCAL_URL = re.compile(r"url\(\s*#[A-Za-z_][\w.-]*\s*\)")
_LOCAL_HREF = re.compile(r"#[A-Za-z_][\w.-]*")
_UNSAFE_STYLE = re.compile(r"url\s*\(|@import|expression\s*\(|\\|javascript:|behavior\s*:", re.I)
_UNSAFE_VALUE = re.compile(r"javascript:|vbscript:|data:|://|<|>", re.I)


class InvalidSvg(ValueError):
    """Not an SVG document this module can make safe (unparseable, DTD, too big, not svg)."""


def _local(tag: str) -> tuple[str | None, str]:
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return ns, name
    return None, tag


def _attribute(name: str, value: str) -> tuple[str, str] | None:
    """The attribute as it may be written out, or None to drop it."""
    ns, local = _local(name)
    if local == "href" and ns in {None, XLINK_NS}:
        value = value.strip()
        return ("href", value) if _LOCAL_HREF.fullmatch(value) else None
    if ns is not None or local not in ATTRIBUTES:
        return None
    if _UNSAFE_VALUE.search(value):
        return None
    if local == "style":
        return (local, value) if not _UNSAFE_STYLE.search(value) else None
    # A url() is only ever a reference to something in this document (a gradient, a marker).
    if "url" in value.lower() and _LOCAL_URL.sub("", value).lower().count("url") > 0:
        return None
    return local, value


def _clean(element: ET.Element, out: list[str], budget: list[int], depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise InvalidSvg(f"nested deeper than {MAX_DEPTH} elements")
    ns, name = _local(element.tag if isinstance(element.tag, str) else "")
    if ns not in {None, SVG_NS} or name not in ELEMENTS:
        return  # dropped with everything inside it
    budget[0] -= 1
    if budget[0] < 0:
        raise InvalidSvg(f"more than {MAX_ELEMENTS} elements")
    attrs = [a for a in (_attribute(k, v) for k, v in element.attrib.items()) if a is not None]
    if name == "svg" and not out:
        attrs = [("xmlns", SVG_NS), *[(k, v) for k, v in attrs if k != "xmlns"]]
    out.append(f"<{name}")
    for key, value in attrs:
        out.append(f" {key}={quoteattr(value)}")
    out.append(">")
    if name in TEXT_ELEMENTS and element.text:
        out.append(escape(element.text))
    for child in element:
        _clean(child, out, budget, depth + 1)
        if child.tail and name in TEXT_ELEMENTS:
            out.append(escape(child.tail))
    out.append(f"</{name}>")


def sanitize_svg(text: str) -> str:
    """The inert SVG rebuilt from `text`; InvalidSvg when it cannot be made safe."""
    if len(text.encode()) > MAX_SVG_BYTES:
        raise InvalidSvg(f"larger than {MAX_SVG_BYTES} bytes")
    try:
        root = fromstring(text, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException as e:
        raise InvalidSvg(f"forbidden XML construct: {type(e).__name__}") from e
    except ET.ParseError as e:
        raise InvalidSvg(f"not well-formed XML: {e}") from e
    ns, name = _local(root.tag)
    if name != "svg" or ns not in {None, SVG_NS}:
        raise InvalidSvg("the root element is not <svg>")
    out: list[str] = []
    _clean(root, out, [MAX_ELEMENTS])
    return "".join(out)


def extract_svg(reply: str) -> str:
    """The `<svg>…</svg>` part of a model's reply (models sometimes add a fence or a line)."""
    start, end = reply.find("<svg"), reply.rfind("</svg>")
    if start < 0 or end < start:
        raise InvalidSvg("the reply holds no <svg> element")
    return reply[start : end + len("</svg>")]


def elements(svg: str) -> Iterator[str]:
    """Local names of every element in a (sanitised) SVG, in document order; for tests."""
    for element in fromstring(svg, forbid_dtd=True).iter():
        yield _local(element.tag)[1]
