"""The SVG sanitiser against a corpus of hostile documents, and its invariants."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from commands.svg import ELEMENTS, InvalidSvg, elements, extract_svg, sanitize_svg

NS = 'xmlns="http://www.w3.org/2000/svg"'
XLINK = 'xmlns:xlink="http://www.w3.org/1999/xlink"'

BENIGN = f"""<svg {NS} viewBox="0 0 200 100" width="200" height="100">
  <defs><linearGradient id="g"><stop offset="0" stop-color="#fff"/></linearGradient>
  <marker id="arrow" markerWidth="10" markerHeight="10" refX="5" refY="5" orient="auto">
  <path d="M0,0 L10,5 L0,10 z"/></marker></defs>
  <rect x="10" y="10" width="80" height="40" fill="url(#g)" stroke="black"/>
  <line x1="90" y1="30" x2="150" y2="30" stroke="black" marker-end="url(#arrow)"/>
  <text x="20" y="35" font-size="12">Spring <tspan font-weight="bold">k</tspan> &amp; mass</text>
  <use href="#arrow" x="5"/>
</svg>"""

# (name, document, what must not survive)
HOSTILE = [
    ("script element", f"<svg {NS}><script>alert(1)</script><rect/></svg>", "script"),
    ("script in a group", f"<svg {NS}><g><script>alert(1)</script></g></svg>", "alert"),
    ("onload", f'<svg {NS} onload="alert(1)"><rect/></svg>', "onload"),
    ("onclick on a shape", f'<svg {NS}><rect onclick="alert(1)"/></svg>', "onclick"),
    ("uppercase handler", f'<svg {NS}><rect ONMOUSEOVER="alert(1)"/></svg>', "alert"),
    (
        "xlink to javascript:",
        f'<svg {NS} {XLINK}><a xlink:href="javascript:alert(1)"><text>x</text></a></svg>',
        "javascript",
    ),
    (
        "use with javascript: href",
        f'<svg {NS} {XLINK}><use xlink:href="javascript:alert(1)"/></svg>',
        "javascript",
    ),
    (
        "entity-encoded javascript:",
        f'<svg {NS}><use href="&#106;avascript:alert(1)"/></svg>',
        "avascript",
    ),
    ("external href", f'<svg {NS}><use href="https://evil.example/x.svg#a"/></svg>', "evil"),
    ("external image", f'<svg {NS}><image href="https://evil.example/t.png"/></svg>', "evil"),
    ("data: image", f'<svg {NS}><image href="data:image/svg+xml;base64,PHN2Zz4="/></svg>', "data:"),
    (
        "CSS url() in style",
        f'<svg {NS}><rect style="fill:url(https://evil.example/)"/></svg>',
        "evil",
    ),
    ("CSS url() in fill", f'<svg {NS}><rect fill="url(https://evil.example/#g)"/></svg>', "evil"),
    (
        "CSS import",
        f"<svg {NS}><style>@import url(https://evil.example/a.css);</style></svg>",
        "evil",
    ),
    ("style element", f"<svg {NS}><style>rect {{ fill: red }}</style><rect/></svg>", "style"),
    ("escaped CSS", f'<svg {NS}><rect style="background:\\75rl(x)"/></svg>', "rl(x)"),
    (
        "foreignObject",
        f'<svg {NS}><foreignObject><iframe xmlns="http://www.w3.org/1999/xhtml" '
        'src="https://evil.example/"/></foreignObject></svg>',
        "iframe",
    ),
    (
        "animate rewriting href",
        f'<svg {NS}><a href="#x"><animate attributeName="href" to="javascript:alert(1)"/>'
        "<text>t</text></a></svg>",
        "javascript",
    ),
    ("set element", f'<svg {NS}><set attributeName="onload" to="alert(1)"/></svg>', "alert"),
    ("vbscript", f'<svg {NS}><rect fill="vbscript:msgbox(1)"/></svg>', "vbscript"),
    (
        "html namespace smuggling",
        f'<svg {NS}><h:script xmlns:h="http://www.w3.org/1999/xhtml">alert(1)</h:script></svg>',
        "alert",
    ),
    (
        "event via xml:base",
        f'<svg {NS} xml:base="javascript:alert(1)//"><rect/></svg>',
        "javascript",
    ),
    (
        "processing instruction",
        f'<?xml-stylesheet href="https://evil.example/x.xsl"?><svg {NS}/>',
        "evil",
    ),
    ("comment smuggling", f"<svg {NS}><!-- <script>alert(1)</script> --><rect/></svg>", "alert"),
    ("CDATA script", f"<svg {NS}><script><![CDATA[alert(1)]]></script></svg>", "alert"),
]

REJECTED = [
    (
        "entity expansion",
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
        '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]>'
        f"<svg {NS}><text>&b;</text></svg>",
    ),
    (
        "external entity",
        '<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
        f"<svg {NS}><text>&x;</text></svg>",
    ),
    ("external DTD", f'<!DOCTYPE svg SYSTEM "https://evil.example/svg.dtd"><svg {NS}/>'),
    ("not svg", '<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>'),
    ("not XML", "<svg><rect></svg>"),
    ("too big", f"<svg {NS}>" + "<rect/>" * 50_000 + "</svg>"),
    ("too many elements", f"<svg {NS}>" + "<rect/>" * 5001 + "</svg>"),
    ("too deep", f"<svg {NS}>" + "<g>" * 100 + "</g>" * 100 + "</svg>"),
]


def test_a_benign_diagram_keeps_its_drawing() -> None:
    clean = sanitize_svg(BENIGN)
    assert list(elements(clean)).count("rect") == 1
    assert 'fill="url(#g)"' in clean
    assert 'marker-end="url(#arrow)"' in clean
    assert 'href="#arrow"' in clean
    assert "Spring <tspan" in clean
    assert "&amp; mass" in clean
    assert clean.startswith('<svg xmlns="http://www.w3.org/2000/svg"')


@pytest.mark.parametrize(("name", "document", "banned"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_content_does_not_survive(name: str, document: str, banned: str) -> None:
    clean = sanitize_svg(document)
    assert banned.lower() not in clean.lower(), clean
    assert set(elements(clean)) <= ELEMENTS
    assert not re.search(r"\son\w+=", clean, re.I)


@pytest.mark.parametrize(("name", "document"), REJECTED, ids=[r[0] for r in REJECTED])
def test_documents_that_cannot_be_made_safe_are_refused(name: str, document: str) -> None:
    with pytest.raises(InvalidSvg):
        sanitize_svg(document)


def test_the_svg_is_found_inside_a_chatty_reply() -> None:
    reply = f"Here is your diagram:\n```svg\n<svg {NS}><rect/></svg>\n```"
    assert sanitize_svg(extract_svg(reply)) == f"<svg {NS}><rect></rect></svg>"
    with pytest.raises(InvalidSvg):
        extract_svg("no drawing today")


NAMES = st.sampled_from(
    ["rect", "script", "g", "foreignObject", "text", "a", "use", "image", "style", "animate"]
)
ATTRS = st.sampled_from(
    ["fill", "onload", "href", "style", "x", "{http://www.w3.org/1999/xlink}href", "onclick"]
)
VALUES = st.sampled_from(
    ["red", "javascript:alert(1)", "url(#g)", "url(https://e.x/)", "#a", "https://e.x/", "1"]
)


@st.composite
def documents(draw: st.DrawFn, depth: int = 3) -> str:
    def element(level: int) -> str:
        name = draw(NAMES)
        attrs = draw(st.lists(st.tuples(ATTRS, VALUES), max_size=3, unique_by=lambda a: a[0]))
        rendered = " ".join(
            f'xlink:href="{v}"' if k.startswith("{") else f'{k}="{v}"' for k, v in attrs
        )
        children = (
            ""
            if level == 0
            else "".join(element(level - 1) for _ in range(draw(st.integers(0, 2))))
        )
        return f"<{name} {rendered}>{children}</{name}>"

    return f"<svg {NS} {XLINK}>{element(depth)}</svg>"


@given(documents())
def test_sanitised_output_is_inert_and_a_fixed_point(document: str) -> None:
    clean = sanitize_svg(document)
    assert sanitize_svg(clean) == clean
    lowered = clean.lower()
    for banned in ("javascript:", "https://", "<script", "onload", "onclick", "<style"):
        assert banned not in lowered
    assert set(elements(clean)) <= ELEMENTS
