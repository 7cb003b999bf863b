/* Cairn's placement core: flat arrays in, status codes out; nothing allocated behind the caller. */
#ifndef CAIRN_FASTPATH_H
#define CAIRN_FASTPATH_H
#include <stddef.h>

#define CAIRN_OK 0
#define CAIRN_EINVAL 1

/* Population standard deviation of n values (Ganeti's htools use it for every metric). */
int cairn_stddev(const double *values, size_t n, double *out);

#endif
