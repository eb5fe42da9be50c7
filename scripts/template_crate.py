#!/usr/bin/env python3
"""Writes a new crate made of the README's template alone, so CI builds exactly that text.

Usage: python3 scripts/template_crate.py DIR

The README section "Put your own tool behind the guard" must hold exactly one ```toml block (the
`[dependencies]` of a new crate) and exactly one ```rust block (its whole `src/main.rs`), and the
rust block must be `examples/guard_your_own_tool.rs` to the byte. DIR gets a `Cargo.toml` (a
`[package]` header, an empty `[workspace]` so it stands alone, then the toml block with the
library's `path` pointed at this checkout) and `src/main.rs`. Exits 1, saying why, otherwise.
"""

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Put your own tool behind the guard"


def fail(why: str) -> None:
    print(f"template_crate: {why}", file=sys.stderr)
    sys.exit(1)


def main() -> None:
    if len(sys.argv) != 2:
        fail("usage: template_crate.py DIR")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.find(SECTION + "\n")
    if start < 0:
        fail(f"README.md has no section `{SECTION}`")
    end = readme.find("\n## ", start + len(SECTION))
    section = readme[start : end if end >= 0 else len(readme)]
    blocks = re.findall(r"^```(\w*)\n(.*?)^```$", section, flags=re.S | re.M)
    languages = [language for language, _ in blocks]
    if sorted(languages) != ["rust", "toml"]:
        fail(f"the template section must hold one toml and one rust block, found {languages}")
    toml = next(body for language, body in blocks if language == "toml")
    rust = next(body for language, body in blocks if language == "rust")
    example = (REPO / "examples/guard_your_own_tool.rs").read_text(encoding="utf-8")
    if rust != example:
        fail("the README's rust block differs from examples/guard_your_own_tool.rs")
    library = (REPO / "crates/stage0-guard").as_posix()
    toml, count = re.subn(
        r'^(stage0-guard = \{ path = )"[^"]*"', rf'\1"{library}"', toml, flags=re.M
    )
    if count != 1:
        fail("the toml block must name the library once, as `stage0-guard = { path = ... }`")
    crate = Path(sys.argv[1])
    (crate / "src").mkdir(parents=True, exist_ok=True)
    header = '[package]\nname = "template-check"\nversion = "0.1.0"\nedition = "2024"\n\n[workspace]\n\n'
    (crate / "Cargo.toml").write_text(header + toml, encoding="utf-8")
    (crate / "src/main.rs").write_text(rust, encoding="utf-8")
    print(f"template_crate: wrote {crate}")


if __name__ == "__main__":
    main()
