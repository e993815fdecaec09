/* Compare one kernel variant of qjl_polar_kernels.h with the scalar reference.
 *
 * Built by tests/test_qjl_polar_kernels_cross.py for another architecture (arm64 NEON
 * under qemu) whose variant the main build cannot run. Exits 0 when every case agrees
 * and prints the first mismatch otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "qjl_polar_kernels.h"

static unsigned long long state = 0x9E3779B97F4A7C15ull;

static unsigned next_random(void)
{
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(state >> 33);
}

static float random_float(void)
{
    return (float)next_random() / 2147483648.0f - 1.0f;
}

/* Float32 sums of n terms in another order differ by at most about n * 2^-23 * sum |terms|. */
static int close_enough(float got, float expected, double abs_sum, size_t n)
{
    return fabs((double)got - (double)expected) <= 4.0 * (double)(n + 1) * 0x1p-23 * abs_sum + 1e-30;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s VARIANT (avx2, avx512 or neon)\n", argv[0]);
        return 2;
    }
    tq_isa isa;
    if (tq_isa_parse(argv[1], &isa, NULL) != TQ_OK) {
        fprintf(stderr, "kernel variant %s is not available in this build\n", argv[1]);
        return 2;
    }
    const tq_qjl_polar_kernels *scalar = &tq_qjl_polar_kernels_scalar;
    const tq_qjl_polar_kernels *variant = tq_qjl_polar_kernels_for(isa);

    enum { MAX_N = 300 };
    static float a[MAX_N], b[4 * MAX_N], table[MAX_N * 256], radius[256], levels[4] = {-1.5f, -0.45f, 0.45f, 1.5f};
    static uint8_t bits[MAX_N], radius_codes[MAX_N], angle_codes[MAX_N];

    for (size_t n = 0; n <= MAX_N; n += (n < 40 ? 1 : 37)) {
        for (size_t i = 0; i < 4 * MAX_N; i++) {
            b[i] = random_float();
        }
        double abs_sum = 0.0;
        for (size_t i = 0; i < n; i++) {
            a[i] = random_float();
            abs_sum += fabs(a[i]);
        }
        for (size_t i = 0; i < MAX_N; i++) {
            bits[i] = (uint8_t)next_random();
        }

        const float dot = variant->dot(a, b, n);
        if (!close_enough(dot, scalar->dot(a, b, n), abs_sum, n)) {
            printf("dot differs at n=%zu: %g vs %g\n", n, (double)dot, (double)scalar->dot(a, b, n));
            return 1;
        }
        float four[4];
        variant->dot4(a, b, MAX_N, n, four);
        for (size_t r = 0; r < 4; r++) {
            if (four[r] != variant->dot(a, b + r * MAX_N, n)) {
                printf("dot4 row %zu differs from dot at n=%zu\n", r, n);
                return 1;
            }
        }
        if (!close_enough(variant->sign_dot(bits, a, n), scalar->sign_dot(bits, a, n), abs_sum, n)) {
            printf("sign_dot differs at n=%zu\n", n);
            return 1;
        }
        if (!close_enough(variant->level2_dot(bits, a, levels, n), scalar->level2_dot(bits, a, levels, n),
                          1.5 * abs_sum, n)) {
            printf("level2_dot differs at n=%zu\n", n);
            return 1;
        }

        const size_t stride = (size_t)1 << (1 + next_random() % 8);
        double table_sum = 0.0;
        for (size_t j = 0; j < n; j++) {
            radius_codes[j] = (uint8_t)(next_random() % 256);
            angle_codes[j] = (uint8_t)(next_random() % stride);
        }
        for (size_t k = 0; k < 256; k++) {
            radius[k] = (float)k / 256.0f;
        }
        for (size_t i = 0; i < n * stride; i++) {
            table[i] = random_float();
        }
        for (size_t j = 0; j < n; j++) {
            table_sum += fabs(radius[radius_codes[j]] * table[j * stride + angle_codes[j]]);
        }
        const float polar = variant->polar_dot(radius_codes, angle_codes, radius, table, n, stride);
        const float polar_scalar = scalar->polar_dot(radius_codes, angle_codes, radius, table, n, stride);
        if (!close_enough(polar, polar_scalar, table_sum, n)) {
            printf("polar_dot differs at n=%zu stride=%zu: %g vs %g\n", n, stride, (double)polar,
                   (double)polar_scalar);
            return 1;
        }
    }
    printf("ok\n");
    return 0;
}
