"""An invoice as HTML and as PDF (fpdf2: pure Python, maintained, core fonts need no files)."""

from __future__ import annotations

import html
from decimal import Decimal

from fpdf import FPDF

from plugins.billing.pricing import exponent
from plugins.billing.schemas import Invoice

__all__ = ["money", "to_html", "to_pdf"]


def money(amount_minor: int, currency: str) -> str:
    """``1234, "USD"`` -> ``"12.34 USD"`` (exactly, from minor units)."""
    exp = exponent(currency)
    return f"{Decimal(amount_minor).scaleb(-exp):.{exp}f} {currency}"


def _title(invoice: Invoice) -> str:
    kind = "Credit note" if invoice.kind == "credit_note" else "Invoice"
    return f"{kind} {invoice.number or '(draft)'}"


def _rows(invoice: Invoice) -> list[tuple[str, str, str]]:
    rows = [
        (str(line["description"]), str(line.get("quantity", "")), money(int(line["amount_minor"]), invoice.currency))
        for line in invoice.lines
    ]
    rows.append(("Total", "", money(invoice.total_minor, invoice.currency)))
    return rows


def to_html(invoice: Invoice, tenant_name: str) -> str:
    body = "".join(
        f"<tr><td>{html.escape(d)}</td><td>{html.escape(q)}</td><td class=amount>{html.escape(a)}</td></tr>"
        for d, q, a in _rows(invoice)
    )
    tax = f"<p>Tax id: {html.escape(invoice.tax_id)}</p>" if invoice.tax_id else ""
    return (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{html.escape(_title(invoice))}</title></head><body>"
        f"<h1>{html.escape(_title(invoice))}</h1><p>{html.escape(tenant_name)}</p>"
        f"<p>Period {invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d} &middot; {invoice.status}</p>"
        f"{tax}<table><thead><tr><th>Item</th><th>Qty</th><th>Amount</th></tr></thead><tbody>{body}</tbody></table>"
        "</body></html>"
    )


def _latin(value: str) -> str:
    # The core fonts are Latin-1: anything else is shown as '?' rather than failing the PDF.
    return value.encode("latin-1", "replace").decode("latin-1")


def to_pdf(invoice: Invoice, tenant_name: str) -> bytes:
    pdf = FPDF(format="A4")
    pdf.set_creation_date(invoice.created_at)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 18)
    pdf.cell(0, 12, _latin(_title(invoice)), new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", "", 11)
    pdf.cell(0, 7, _latin(tenant_name), new_x="LMARGIN", new_y="NEXT")
    pdf.cell(0, 7, f"Period {invoice.period_start:%Y-%m-%d} to {invoice.period_end:%Y-%m-%d}  ({invoice.status})",
             new_x="LMARGIN", new_y="NEXT")
    if invoice.tax_id:
        pdf.cell(0, 7, _latin(f"Tax id: {invoice.tax_id}"), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    with pdf.table(col_widths=(110, 25, 45), text_align=("LEFT", "RIGHT", "RIGHT")) as table:
        table.row(("Item", "Qty", "Amount"))
        for row in _rows(invoice):
            table.row(tuple(_latin(cell) for cell in row))
    return bytes(pdf.output())
