/* C shim between the Fortran cumulus module and the Python emulator runtime.
 *
 * The Fortran side describes each WRF array by name, address, type and memory extents; the shim
 * wraps them as numpy arrays over the same memory and calls emulator.runtime.Runtime.run_tile.
 * Every function returns 0 on success, otherwise non-zero with a NUL-terminated explanation in
 * `message` (at most message_len bytes including the NUL). Safe to call from several threads.
 */
#ifndef MLCU_SHIM_H
#define MLCU_SHIM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MLCU_NAME_LEN 16
#define MLCU_REAL32 1
#define MLCU_INT32 2

/* One WRF array, laid out as Fortran stores it (first index fastest). Mirrored by the
 * bind(c) type mlcu_array_t in module_cu_mlcu.F90. */
typedef struct {
    char name[MLCU_NAME_LEN]; /* upper-case WRF name, NUL-terminated */
    void *data;               /* first element of the memory (ims, kms, jms) */
    int32_t dtype;            /* MLCU_REAL32 or MLCU_INT32 */
    int32_t rank;             /* 2 or 3 */
    int64_t extent[3];        /* memory extents: (ime-ims+1, kme-kms+1, jme-jms+1) or (ime-ims+1, jme-jms+1) */
} mlcu_array_t;

/* Start (or join) the interpreter, import the runtime and load the model. Calling it again with
 * the same settings does nothing (WRF initialises physics once per domain). */
int mlcu_shim_init(const char *model_path, int32_t nthreads, const char *device,
                   const char *nan_policy, const char *ood_policy, int32_t n_levels,
                   char *message, int32_t message_len);

/* Run the model on one tile. bounds: ids,ide,jds,jde,kds,kde, ims,ime,jms,jme,kms,kme,
 * its,ite,jts,jte,kts,kte as WRF passes them (1-based). */
int mlcu_shim_run_tile(const mlcu_array_t *arrays, int32_t n_arrays, const int32_t *bounds,
                       float dt, float dx, float cudt, int32_t stepcu,
                       char *message, int32_t message_len);

/* Sum over all calls of this process of the runtime counter `name` (0 when never reported). */
int64_t mlcu_shim_counter(const char *name);

/* Every counter the runtime reported, summed over this process's calls, as one line
 * "name=value name=value ..." in the order the runtime first reported them (empty before the
 * first call). Returns 0, or non-zero when the line did not fit in text_len bytes (it is cut). */
int mlcu_shim_counters(char *text, int32_t text_len);

/* Drop the runtime; finalise the interpreter only if the shim started it. */
int mlcu_shim_finalize(char *message, int32_t message_len);

#ifdef __cplusplus
}
#endif

#endif
