/*
 * svg.h - a small SVG line-chart writer (log-log axes), used by `deltanet compare`.
 */
#ifndef DN_SVG_H
#define DN_SVG_H

typedef struct {
    const char *name;
    const double *x, *y;
    int n;
} svg_series;

typedef struct {
    const char *title, *xlabel, *ylabel, *note;
    const svg_series *series;
    int n_series;
} svg_chart;

/* Writes a log-log chart; points with x <= 0 or y <= 0 are skipped. 0 on success. */
int svg_chart_write(const char *path, const svg_chart *c);

#endif
