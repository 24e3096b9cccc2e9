"""mkdocs hook: the reference tables are generated from the code at build time
(``fedem_jax.settings.reference``), so the pages cannot drift from the flags and the registry."""

from fedem_jax.settings import reference

_GENERATED = {
    "<!-- generated: flags -->": reference.flags_markdown,
    "<!-- generated: presets -->": reference.presets_markdown,
    "<!-- generated: methods -->": reference.methods_markdown,
}


def on_page_markdown(markdown, **kwargs):
    for marker, generate in _GENERATED.items():
        if marker in markdown:
            markdown = markdown.replace(marker, generate())
    return markdown
