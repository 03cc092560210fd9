/*
 * svg.c - a small SVG line-chart writer for `deltanet compare`: log-log or log-linear axes with
 * decade ticks, one polyline with markers per series, a legend. Self-contained files that any
 * browser renders.
 */
#include "svg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const palette[] = {"#d62728", "#1f77b4", "#2ca02c", "#9467bd",
                                      "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

static void xml_text(FILE *f, const char *s) {
    for (; *s; s++) {
        if (*s == '<')
            fputs("&lt;", f);
        else if (*s == '>')
            fputs("&gt;", f);
        else if (*s == '&')
            fputs("&amp;", f);
        else
            fputc(*s, f);
    }
}

static void fmt_tick(char *buf, size_t n, double v) {
    if (v >= 1e9)
        snprintf(buf, n, "%gG", v / 1e9);
    else if (v >= 1e6)
        snprintf(buf, n, "%gM", v / 1e6);
    else if (v >= 1e3)
        snprintf(buf, n, "%gk", v / 1e3);
    else
        snprintf(buf, n, "%g", v);
}

int svg_chart_write(const char *path, const svg_chart *c) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    const double W = 860, H = 480, L = 90, R = 300, T = 50, B = 60;
    double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int s = 0; s < c->n_series; s++)
        for (int i = 0; i < c->series[s].n; i++) {
            double x = c->series[s].x[i], y = c->series[s].y[i];
            if (!(x > 0) || !(y > 0) || !isfinite(x) || !isfinite(y)) continue;
            xmin = fmin(xmin, x), xmax = fmax(xmax, x), ymin = fmin(ymin, y), ymax = fmax(ymax, y);
        }
    if (!(xmax >= xmin)) xmin = 1, xmax = 10;
    if (!(ymax >= ymin)) ymin = 1, ymax = 10;
    double lx0 = floor(log10(xmin)), lx1 = ceil(log10(xmax)), ly0 = floor(log10(ymin)),
           ly1 = ceil(log10(ymax));
    if (lx1 <= lx0) lx1 = lx0 + 1;
    if (ly1 <= ly0) ly1 = ly0 + 1;
#define PX(x) (L + (log10(x) - lx0) / (lx1 - lx0) * (W - L - R))
#define PY(y) (H - B - (log10(y) - ly0) / (ly1 - ly0) * (H - T - B))
    fprintf(f,
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
            "viewBox=\"0 0 %.0f %.0f\" font-family=\"Helvetica, Arial, sans-serif\" "
            "font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
            W, H, W, H);
    fprintf(f, "<text x=\"%.0f\" y=\"28\" font-size=\"16\" font-weight=\"bold\">", L);
    xml_text(f, c->title);
    fprintf(f, "</text>\n");
    /* grid and ticks: every decade, with 2 and 5 as minor lines */
    for (double e = lx0; e <= lx1; e++)
        for (int m = 1; m <= 9; m++) {
            double v = pow(10, e) * m;
            if (log10(v) > lx1 + 1e-9) break;
            double x = PX(v);
            fprintf(f, "<line x1=\"%.1f\" y1=\"%.0f\" x2=\"%.1f\" y2=\"%.0f\" stroke=\"%s\"/>\n", x,
                    T, x, H - B, m == 1 ? "#bbb" : "#eee");
            if (m == 1) {
                char buf[32];
                fmt_tick(buf, sizeof buf, v);
                fprintf(f, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%s</text>\n", x,
                        H - B + 18, buf);
            }
        }
    for (double e = ly0; e <= ly1; e++)
        for (int m = 1; m <= 9; m++) {
            double v = pow(10, e) * m;
            if (log10(v) > ly1 + 1e-9) break;
            double y = PY(v);
            fprintf(f, "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"%s\"/>\n", L,
                    y, W - R, y, m == 1 ? "#bbb" : "#eee");
            if (m == 1) {
                char buf[32];
                fmt_tick(buf, sizeof buf, v);
                fprintf(f, "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", L - 6,
                        y + 4, buf);
            }
        }
    fprintf(f,
            "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" fill=\"none\" "
            "stroke=\"#333\"/>\n",
            L, T, W - L - R, H - T - B);
    fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" text-anchor=\"middle\">", (L + W - R) / 2, H - 16);
    xml_text(f, c->xlabel);
    fprintf(f,
            "</text>\n<text transform=\"translate(22 %.0f) rotate(-90)\" "
            "text-anchor=\"middle\">",
            (T + H - B) / 2);
    xml_text(f, c->ylabel);
    fprintf(f, "</text>\n");
    for (int s = 0; s < c->n_series; s++) {
        const svg_series *sr = &c->series[s];
        const char *col = palette[s % 8];
        fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"2\" points=\"", col);
        for (int i = 0; i < sr->n; i++)
            if (sr->x[i] > 0 && sr->y[i] > 0 && isfinite(sr->y[i]))
                fprintf(f, "%.1f,%.1f ", PX(sr->x[i]), PY(sr->y[i]));
        fprintf(f, "\"/>\n");
        for (int i = 0; i < sr->n; i++)
            if (sr->x[i] > 0 && sr->y[i] > 0 && isfinite(sr->y[i]))
                fprintf(f, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", PX(sr->x[i]),
                        PY(sr->y[i]), col);
        double ly = T + 14 + 20 * s;
        fprintf(f,
                "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                "stroke-width=\"3\"/>\n<text x=\"%.0f\" y=\"%.0f\">",
                W - R + 12, ly, W - R + 36, ly, col, W - R + 42, ly + 4);
        xml_text(f, sr->name);
        fprintf(f, "</text>\n");
    }
    if (c->note) {
        fprintf(f, "<text x=\"%.0f\" y=\"%.0f\" font-size=\"11\" fill=\"#555\">", L, T - 8);
        xml_text(f, c->note);
        fprintf(f, "</text>\n");
    }
    fprintf(f, "</svg>\n");
#undef PX
#undef PY
    return fclose(f) == 0 ? 0 : -1;
}
