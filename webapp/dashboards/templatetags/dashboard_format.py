from django import template
from django.utils.html import format_html

register = template.Library()


@register.filter
def proportion(p):
    """A Wilson proportion as 'estimate (low-high) k/n', or '-' when undefined."""
    if not p:
        return "-"
    return format_html('{} <span class="ci">({}&ndash;{}) {}/{}</span>',
                       f"{p['estimate']:.3f}", f"{p['ci_low']:.3f}", f"{p['ci_high']:.3f}",
                       p["k"], p["n"])


@register.filter
def auroc(perf):
    if not perf or perf.get("auroc") is None:
        return "-"
    ci = perf.get("auroc_ci")
    if not ci:
        return f"{perf['auroc']:.3f}"
    return format_html('{} <span class="ci">({}&ndash;{})</span>', f"{perf['auroc']:.3f}",
                       f"{ci[0]:.3f}", f"{ci[1]:.3f}")


@register.filter
def share(value):
    return "-" if value is None else f"{100 * value:.0f}%"


@register.filter
def number(value, digits=3):
    return "-" if value is None else f"{value:.{int(digits)}f}"


@register.filter
def pvalue(value):
    if value is None:
        return "-"
    return "<0.001" if value < 0.001 else f"{value:.3f}"
