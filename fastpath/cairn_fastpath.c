/* Cairn's placement core: the numeric kernels behind fastpath.core. */
#include <math.h>
#include "cairn_fastpath.h"

int cairn_stddev(const double *values, size_t n, double *out)
{
    if (out == NULL || (n > 0 && values == NULL))
        return CAIRN_EINVAL;
    if (n == 0) {
        *out = 0.0;
        return CAIRN_OK;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += values[i];
    double mean = sum / (double)n;
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = values[i] - mean;
        acc += d * d;
    }
    *out = sqrt(acc / (double)n);
    return CAIRN_OK;
}
