#include "codebook.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define GL_POINTS 16
#define LLOYD_TOLERANCE 1e-12
#define LLOYD_MAX_ITERATIONS 1000000
#define FIT_MAX_ITERATIONS 100000

/* Integration of a density in a variable t where it is smooth.
 *
 * The sphere densities have integrable singularities or infinite slopes at
 * x = +-1 for small dim, so they are integrated in t with x = sin(t):
 *   sphere:       (1-x^2)^((dim-3)/2) dx = cos(t)^(dim-2) dt,            t in [-pi/2, pi/2]
 *   pair radius:  r (1-r^2)^((dim-4)/2) dr = sin(t) cos(t)^(dim-3) dt,   t in [0, pi/2]
 *   gaussian:     exp(-dim x^2 / 2) dx with t = x.
 * All three are peaked with a width sigma ~ 1/sqrt(dim) in t. The range is cut at
 * 12 sigma, where the weight has fallen below exp(-72) of its peak, far below the
 * 1e-12 tolerance. Panels of sigma/2 keep each 16-point rule exact to rounding. */
typedef struct {
    tq_density density;
    int dim;
    double t_lo;
    double t_hi;
    double panel;
    double nodes[GL_POINTS];   /* Gauss-Legendre nodes on [-1, 1] */
    double weights[GL_POINTS]; /* and their weights */
} density_ctx;

/* Gauss-Legendre nodes and weights by Newton iteration on P_n, to double precision. */
static void gauss_legendre(int n, double *nodes, double *weights)
{
    for (int i = 0; i < n; i++) {
        double z = cos(M_PI * (i + 0.75) / (n + 0.5));
        double dp = 1.0;
        for (int iter = 0; iter < 100; iter++) {
            double p0 = 1.0;
            double p1 = z;
            for (int k = 2; k <= n; k++) {
                const double p2 = ((2.0 * k - 1.0) * z * p1 - (k - 1.0) * p0) / k;
                p0 = p1;
                p1 = p2;
            }
            dp = n * (z * p1 - p0) / (z * z - 1.0);
            const double step = p1 / dp;
            z -= step;
            if (fabs(step) < 1e-16) {
                break;
            }
        }
        nodes[i] = z;
        weights[i] = 2.0 / ((1.0 - z * z) * dp * dp);
    }
}

static double x_of_t(const density_ctx *ctx, double t)
{
    return ctx->density == TQ_DENSITY_GAUSSIAN ? t : sin(t);
}

static double t_of_x(const density_ctx *ctx, double x)
{
    if (ctx->density == TQ_DENSITY_GAUSSIAN) {
        return x;
    }
    return asin(fmax(-1.0, fmin(1.0, x)));
}

/* Unnormalised density in t, at most 1. */
static double weight_of_t(const density_ctx *ctx, double t)
{
    switch (ctx->density) {
    case TQ_DENSITY_GAUSSIAN:
        return exp(-0.5 * ctx->dim * t * t);
    case TQ_DENSITY_SPHERE: {
        const double c = cos(t);
        if (ctx->dim == 2) {
            return 1.0;
        }
        return c > 0.0 ? exp((ctx->dim - 2) * log(c)) : 0.0;
    }
    case TQ_DENSITY_PAIR_RADIUS: {
        const double c = cos(t);
        if (ctx->dim == 3) {
            return sin(t);
        }
        return c > 0.0 ? sin(t) * exp((ctx->dim - 3) * log(c)) : 0.0;
    }
    }
    return 0.0;
}

static tq_status density_init(density_ctx *ctx, tq_density density, int dim, tq_error *err)
{
    memset(ctx, 0, sizeof(*ctx));
    ctx->density = density;
    ctx->dim = dim;
    gauss_legendre(GL_POINTS, ctx->nodes, ctx->weights);

    const double half_pi = M_PI / 2.0;
    double sigma;
    switch (density) {
    case TQ_DENSITY_GAUSSIAN:
        if (dim < 1) {
            return tq_error_set(err, TQ_ERR_INVALID, "codebook dim must be at least 1 for the gaussian density, got %d",
                                dim);
        }
        sigma = 1.0 / sqrt((double)dim);
        ctx->t_lo = -12.0 * sigma;
        ctx->t_hi = 12.0 * sigma;
        break;
    case TQ_DENSITY_SPHERE:
        if (dim < 2) {
            return tq_error_set(err, TQ_ERR_INVALID, "codebook dim must be at least 2 for the sphere density, got %d",
                                dim);
        }
        sigma = 1.0 / sqrt(fmax(dim - 2.0, 1.0));
        ctx->t_hi = fmin(half_pi, 12.0 * sigma);
        ctx->t_lo = -ctx->t_hi;
        break;
    case TQ_DENSITY_PAIR_RADIUS:
        if (dim < 3) {
            return tq_error_set(err, TQ_ERR_INVALID,
                                "codebook dim must be at least 3 for the pair-radius density (at dim 2 the radius "
                                "is always 1), got %d",
                                dim);
        }
        sigma = 1.0 / sqrt(fmax(dim - 3.0, 1.0));
        ctx->t_lo = 0.0;
        ctx->t_hi = fmin(half_pi, 12.0 * sigma);
        break;
    default:
        return tq_error_set(err, TQ_ERR_INVALID,
                            "unknown codebook density %d; expected 0 (sphere), 1 (gaussian) or 2 (pair radius)",
                            (int)density);
    }
    ctx->panel = fmin(sigma, half_pi) / 2.0;
    return TQ_OK;
}

/* Integrals over x in [x_a, x_b] of f(x), x f(x) and (x - center)^2 f(x), with f
 * the unnormalised density. */
static void cell_moments(const density_ctx *ctx, double x_a, double x_b, double center, double *m0, double *m1,
                         double *m2)
{
    double s0 = 0.0;
    double s1 = 0.0;
    double s2 = 0.0;
    const double t_a = fmax(ctx->t_lo, t_of_x(ctx, x_a));
    const double t_b = fmin(ctx->t_hi, t_of_x(ctx, x_b));
    if (t_b > t_a) {
        const int panels = (int)ceil((t_b - t_a) / ctx->panel);
        const double width = (t_b - t_a) / panels;
        for (int p = 0; p < panels; p++) {
            const double mid = t_a + (p + 0.5) * width;
            for (int k = 0; k < GL_POINTS; k++) {
                const double t = mid + 0.5 * width * ctx->nodes[k];
                const double w = 0.5 * width * ctx->weights[k] * weight_of_t(ctx, t);
                const double x = x_of_t(ctx, t);
                s0 += w;
                s1 += w * x;
                s2 += w * (x - center) * (x - center);
            }
        }
    }
    *m0 = s0;
    *m1 = s1;
    *m2 = s2;
}

#define COMPANDING_GRID 4096

/* Start Lloyd's iteration from the high-resolution optimum: for many levels the
 * optimal centroids sit at the quantiles (i + 1/2) / levels of the density
 * proportional to f(x)^(1/3), the classic high-resolution result. Starting there instead of
 * from an even grid cuts the iterations at 8 bits by orders of magnitude. The
 * quantiles come from a trapezoid table of f^(1/3) dx in t, where dx = x'(t) dt. */
static tq_status companding_start(const density_ctx *ctx, int levels, double *c, tq_error *err)
{
    double *cumulative = malloc((COMPANDING_GRID + 1) * sizeof(double));
    if (cumulative == NULL) {
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for the Lloyd-Max start table");
    }
    const double step = (ctx->t_hi - ctx->t_lo) / COMPANDING_GRID;
    double previous = 0.0;
    cumulative[0] = 0.0;
    for (int k = 0; k <= COMPANDING_GRID; k++) {
        const double t = ctx->t_lo + k * step;
        const double slope = ctx->density == TQ_DENSITY_GAUSSIAN ? 1.0 : cos(t);
        const double density = slope > 0.0 ? weight_of_t(ctx, t) / slope : 0.0;
        const double value = cbrt(density) * slope;
        if (k > 0) {
            cumulative[k] = cumulative[k - 1] + 0.5 * step * (previous + value);
        }
        previous = value;
    }
    const double total = cumulative[COMPANDING_GRID];
    int k = 0;
    for (int i = 0; i < levels; i++) {
        const double target = total * (i + 0.5) / levels;
        while (k < COMPANDING_GRID - 1 && cumulative[k + 1] < target) {
            k++;
        }
        const double width = cumulative[k + 1] - cumulative[k];
        const double frac = width > 0.0 ? (target - cumulative[k]) / width : 0.5;
        c[i] = x_of_t(ctx, ctx->t_lo + (k + frac) * step);
    }
    free(cumulative);
    return TQ_OK;
}

/* Unnormalised density in x at x, consistent with the weights of cell_moments. */
static double density_of_x(const density_ctx *ctx, double x)
{
    const double t = t_of_x(ctx, x);
    if (t <= ctx->t_lo || t >= ctx->t_hi) {
        return 0.0;
    }
    const double slope = ctx->density == TQ_DENSITY_GAUSSIAN ? 1.0 : cos(t);
    return slope > 0.0 ? weight_of_t(ctx, t) / slope : 0.0;
}

/* One Newton step on the Lloyd fixed point c = T(c), where T maps centroids to the
 * conditional means of the cells between their midpoints. Lloyd's iteration alone
 * converges linearly, with a rate that tends to 1 as the levels grow (thousands of
 * steps at 8 bits); Newton converges quadratically near the optimum.
 * The Jacobian of T is tridiagonal. Moving the upper edge e of cell i (mass m,
 * mean T_i) by de moves T_i by f(e) (e - T_i) / m de, and the lower edge moves it
 * by minus that. Each inner edge is the midpoint of its two centroids.
 * Writes next and returns 1, or returns 0 when the step would leave the centroids
 * unordered or outside the support, so the caller takes the plain Lloyd step. */
static int newton_step(const density_ctx *ctx, int levels, const double *c, const double *edges, const double *lloyd,
                       const double *mass, double *next)
{
    double lower[1 << TQ_CODEBOOK_MAX_BITS] = {0}; /* d T_i / d c_{i-1} */
    double diag[1 << TQ_CODEBOOK_MAX_BITS] = {0};  /* d T_i / d c_i - 1 */
    double upper[1 << TQ_CODEBOOK_MAX_BITS] = {0}; /* d T_i / d c_{i+1} */
    double rhs[1 << TQ_CODEBOOK_MAX_BITS] = {0};
    for (int i = 0; i < levels; i++) {
        if (!(mass[i] > 1e-300)) {
            return 0;
        }
        double from_lower = 0.0;
        double from_upper = 0.0;
        if (i > 0) {
            from_lower = -density_of_x(ctx, edges[i]) * (edges[i] - lloyd[i]) / mass[i];
        }
        if (i < levels - 1) {
            from_upper = density_of_x(ctx, edges[i + 1]) * (edges[i + 1] - lloyd[i]) / mass[i];
        }
        lower[i] = 0.5 * from_lower;
        upper[i] = 0.5 * from_upper;
        diag[i] = 0.5 * (from_lower + from_upper) - 1.0;
        rhs[i] = c[i] - lloyd[i];
    }

    /* Thomas algorithm for (J - I) delta = c - T(c). */
    for (int i = 1; i < levels; i++) {
        if (diag[i - 1] == 0.0) {
            return 0;
        }
        const double factor = lower[i] / diag[i - 1];
        diag[i] -= factor * upper[i - 1];
        rhs[i] -= factor * rhs[i - 1];
    }
    if (diag[levels - 1] == 0.0) {
        return 0;
    }
    double delta = rhs[levels - 1] / diag[levels - 1];
    next[levels - 1] = c[levels - 1] + delta;
    for (int i = levels - 2; i >= 0; i--) {
        delta = (rhs[i] - upper[i] * delta) / diag[i];
        next[i] = c[i] + delta;
    }

    const double x_lo = x_of_t(ctx, ctx->t_lo);
    const double x_hi = x_of_t(ctx, ctx->t_hi);
    for (int i = 0; i < levels; i++) {
        if (!isfinite(next[i]) || next[i] <= x_lo || next[i] >= x_hi || (i > 0 && !(next[i] > next[i - 1]))) {
            return 0;
        }
    }
    return 1;
}

static tq_status check_bits(int bits, tq_error *err)
{
    if (bits < 1 || bits > TQ_CODEBOOK_MAX_BITS) {
        return tq_error_set(err, TQ_ERR_INVALID, "codebook bits must be in 1..%d, got %d", TQ_CODEBOOK_MAX_BITS, bits);
    }
    return TQ_OK;
}

tq_status tq_codebook_lloyd_max(tq_density density, int dim, int bits, float *centroids, double *mse, tq_error *err)
{
    tq_status status = check_bits(bits, err);
    if (status != TQ_OK) {
        return status;
    }
    density_ctx ctx;
    status = density_init(&ctx, density, dim, err);
    if (status != TQ_OK) {
        return status;
    }

    const int levels = 1 << bits;
    double c[1 << TQ_CODEBOOK_MAX_BITS];
    double edges[(1 << TQ_CODEBOOK_MAX_BITS) + 1];
    const double x_lo = x_of_t(&ctx, ctx.t_lo);
    const double x_hi = x_of_t(&ctx, ctx.t_hi);

    status = companding_start(&ctx, levels, c, err);
    if (status != TQ_OK) {
        return status;
    }

    double total, unused1, unused2;
    cell_moments(&ctx, x_lo, x_hi, 0.0, &total, &unused1, &unused2);

    int converged = 0;
    for (int iter = 0; iter < LLOYD_MAX_ITERATIONS && !converged; iter++) {
        edges[0] = x_lo;
        edges[levels] = x_hi;
        for (int i = 1; i < levels; i++) {
            edges[i] = 0.5 * (c[i - 1] + c[i]);
        }
        double lloyd[1 << TQ_CODEBOOK_MAX_BITS];
        double mass[1 << TQ_CODEBOOK_MAX_BITS];
        for (int i = 0; i < levels; i++) {
            double m1, m2;
            cell_moments(&ctx, edges[i], edges[i + 1], 0.0, &mass[i], &m1, &m2);
            /* A cell with no mass in double precision keeps its centroid. */
            lloyd[i] = mass[i] > 1e-300 ? m1 / mass[i] : c[i];
        }

        double next[1 << TQ_CODEBOOK_MAX_BITS];
        if (!newton_step(&ctx, levels, c, edges, lloyd, mass, next)) {
            memcpy(next, lloyd, (size_t)levels * sizeof(double));
        }
        double max_move = 0.0;
        double max_abs = 0.0;
        for (int i = 0; i < levels; i++) {
            max_move = fmax(max_move, fabs(next[i] - c[i]));
            max_abs = fmax(max_abs, fabs(next[i]));
            c[i] = next[i];
        }
        converged = max_move <= LLOYD_TOLERANCE * max_abs;
    }
    if (!converged) {
        return tq_error_set(err, TQ_ERR_INVALID,
                            "Lloyd-Max iteration for density %d, dim %d, bits %d did not converge in %d steps",
                            (int)density, dim, bits, LLOYD_MAX_ITERATIONS);
    }

    double error = 0.0;
    for (int i = 0; i < levels; i++) {
        const double lo = i == 0 ? x_lo : 0.5 * (c[i - 1] + c[i]);
        const double hi = i == levels - 1 ? x_hi : 0.5 * (c[i] + c[i + 1]);
        double m0, m1, m2;
        cell_moments(&ctx, lo, hi, c[i], &m0, &m1, &m2);
        error += m2;
        centroids[i] = (float)c[i];
    }
    if (mse != NULL) {
        *mse = error / total;
    }
    return TQ_OK;
}

static int compare_float(const void *a, const void *b)
{
    const float x = *(const float *)a;
    const float y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Number of sorted values that are <= bound. */
static size_t count_at_most(const float *sorted, size_t n, double bound)
{
    size_t lo = 0;
    size_t hi = n;
    while (lo < hi) {
        const size_t mid = lo + (hi - lo) / 2;
        if ((double)sorted[mid] <= bound) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo;
}

tq_status tq_codebook_fit(const float *samples, size_t n, int bits, float *centroids, double *mse, tq_error *err)
{
    tq_status status = check_bits(bits, err);
    if (status != TQ_OK) {
        return status;
    }
    if (n == 0) {
        return tq_error_set(err, TQ_ERR_INVALID, "codebook fit needs at least one sample, got 0");
    }
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(samples[i])) {
            return tq_error_set(err, TQ_ERR_INVALID, "codebook sample %zu is %g; samples must be finite", i,
                                (double)samples[i]);
        }
    }
    size_t sorted_bytes, prefix_bytes;
    if (!tq_mul_size(n, sizeof(float), &sorted_bytes) || !tq_mul_size(n + 1, sizeof(double), &prefix_bytes)) {
        return tq_error_set(err, TQ_ERR_NOMEM, "codebook fit: %zu samples are too many", n);
    }
    float *sorted = malloc(sorted_bytes);
    double *prefix = malloc(prefix_bytes);
    if (sorted == NULL || prefix == NULL) {
        free(sorted);
        free(prefix);
        return tq_error_set(err, TQ_ERR_NOMEM, "out of memory for a codebook fit on %zu samples", n);
    }
    memcpy(sorted, samples, sorted_bytes);
    qsort(sorted, n, sizeof(float), compare_float);
    prefix[0] = 0.0;
    for (size_t i = 0; i < n; i++) {
        prefix[i + 1] = prefix[i] + sorted[i];
    }

    const int levels = 1 << bits;
    double c[1 << TQ_CODEBOOK_MAX_BITS];
    for (int i = 0; i < levels; i++) {
        size_t index = (size_t)(((double)i + 0.5) / levels * (double)n);
        c[i] = sorted[index < n ? index : n - 1];
    }

    for (int iter = 0; iter < FIT_MAX_ITERATIONS; iter++) {
        double max_move = 0.0;
        double max_abs = 0.0;
        size_t start = 0;
        double next[1 << TQ_CODEBOOK_MAX_BITS];
        for (int i = 0; i < levels; i++) {
            /* Cell i contains the samples above boundary i-1 and at most boundary i,
             * the same tie rule as the encoders. */
            const size_t end = i == levels - 1 ? n : count_at_most(sorted, n, 0.5 * (c[i] + c[i + 1]));
            next[i] = end > start ? (prefix[end] - prefix[start]) / (double)(end - start) : c[i];
            start = end > start ? end : start;
        }
        for (int i = 0; i < levels; i++) {
            max_move = fmax(max_move, fabs(next[i] - c[i]));
            max_abs = fmax(max_abs, fabs(next[i]));
            c[i] = next[i];
        }
        if (max_move <= LLOYD_TOLERANCE * max_abs) {
            break;
        }
    }
    /* NOTE: at the iteration limit the centroids are still an ascending codebook,
     * only not an exact fixed point. That is not reported as an error, because
     * k-means on clustered data can creep for a long time. */

    double error = 0.0;
    int cell = 0;
    for (size_t i = 0; i < n; i++) {
        while (cell < levels - 1 && (double)sorted[i] > 0.5 * (c[cell] + c[cell + 1])) {
            cell++;
        }
        const double diff = (double)sorted[i] - c[cell];
        error += diff * diff;
    }
    for (int i = 0; i < levels; i++) {
        centroids[i] = (float)c[i];
    }
    if (mse != NULL) {
        *mse = error / (double)n;
    }
    free(sorted);
    free(prefix);
    return TQ_OK;
}
