/* C shim: embeds CPython (or joins the interpreter already running, when the Fortran code was
 * itself called from Python) and calls emulator.runtime on WRF's arrays without copying them.
 * See mlcu_shim.h for the interface and README.md for how Python is located. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mlcu_shim.h"

/* The virtual environment recorded at build time; MLCU_VENV overrides it at run time. */
#ifndef MLCU_DEFAULT_VENV
#define MLCU_DEFAULT_VENV ""
#endif

#define MAX_NAMES 128
#define OPTIONS_LEN 4096

/* Process-wide state. Python objects are touched only while holding the GIL; init and finalize
 * are serialised by init_lock. */
static pthread_mutex_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static PyObject *run_tile;          /* bound method Runtime.run_tile */
static PyObject *totals;            /* dict: counter name -> sum over calls */
static PyObject *names[MAX_NAMES];  /* interned array names, reused by every call */
static char name_text[MAX_NAMES][MLCU_NAME_LEN];
static int n_names;
static char required[MAX_NAMES][MLCU_NAME_LEN]; /* Runtime.required_arrays */
static int n_required;
/* The dicts of numpy views built for recent calls, keyed by their array descriptions: WRF passes
 * the same patch memory for every tile and step, so the views are made once per layout. */
#define CACHE_SLOTS 8
static struct {
    mlcu_array_t *arrays;
    int32_t n;
    PyObject *dict;
} cache[CACHE_SLOTS];
static int cache_next;
static char options[OPTIONS_LEN];   /* the settings of the loaded runtime */
static int owns_interpreter;        /* this shim started Python (embedded in a Fortran program) */
static int interpreter_closed;      /* we finalised it: numpy cannot be started twice */
static PyThreadState *main_state;   /* saved when the GIL is released after start-up */

static int say(char *message, int32_t len, const char *fmt, ...)
{
    va_list ap;
    if (message && len > 0) {
        va_start(ap, fmt);
        vsnprintf(message, (size_t)len, fmt, ap);
        va_end(ap);
    }
    return 1;
}

/* Turn the pending Python exception into "context: Type: text"; clears it. */
static int say_exception(char *message, int32_t len, const char *context)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    const char *tname = type ? ((PyTypeObject *)type)->tp_name : "error";
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *ctext = text ? PyUnicode_AsUTF8(text) : NULL;
    if (!ctext) {
        PyErr_Clear();
        ctext = "(no message)";
    }
    say(message, len, "%s: %s: %s", context, tname, ctext);
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return 1;
}

/* Start the interpreter with the virtual environment's executable, so that its site-packages
 * (numpy, onnxruntime, this project) are on the path. */
static int start_python(char *message, int32_t len)
{
    const char *venv = getenv("MLCU_VENV");
    if (!venv || !*venv)
        venv = MLCU_DEFAULT_VENV;
    char exe[OPTIONS_LEN] = "";
    if (*venv) {
        snprintf(exe, sizeof exe, "%s/bin/python", venv);
        if (access(exe, X_OK) != 0)
            return say(message, len,
                       "no Python interpreter at %s: set MLCU_VENV to the project's virtual "
                       "environment", exe);
    }
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* signals belong to the model and MPI */
    config.parse_argv = 0;
    PyStatus status = PyStatus_Ok();
    if (*exe)
        status = PyConfig_SetBytesString(&config, &config.program_name, exe);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status))
        return say(message, len, "cannot start Python (%s): %s", *exe ? exe : "default paths",
                   status.err_msg ? status.err_msg : "unknown error");
    owns_interpreter = 1;
    return 0;
}

/* Where the interpreter looks for packages, to make import errors actionable. */
static void describe_python(char *buf, size_t len)
{
    PyObject *exe = PySys_GetObject("executable"); /* borrowed */
    PyObject *prefix = PySys_GetObject("prefix");
    const char *e = exe ? PyUnicode_AsUTF8(exe) : NULL;
    const char *p = prefix ? PyUnicode_AsUTF8(prefix) : NULL;
    PyErr_Clear();
    snprintf(buf, len, " (Python %s, sys.prefix %s; set MLCU_VENV to the project's virtual environment)",
             e ? e : "?", p ? p : "?");
}

static PyObject *interned(const char *name)
{
    for (int i = 0; i < n_names; i++)
        if (strncmp(name_text[i], name, MLCU_NAME_LEN) == 0)
            return names[i];
    if (n_names == MAX_NAMES)
        return NULL;
    PyObject *s = PyUnicode_InternFromString(name);
    if (s) {
        snprintf(name_text[n_names], MLCU_NAME_LEN, "%s", name);
        names[n_names++] = s;
    }
    return s;
}

/* Keep Runtime.required_arrays as C strings, checked against the arrays of every call. */
static int load_required(PyObject *runtime, char *message, int32_t len)
{
    PyObject *req = PyObject_GetAttrString(runtime, "required_arrays");
    PyObject *seq = req ? PySequence_Fast(req, "required_arrays is not a sequence") : NULL;
    Py_XDECREF(req);
    if (!seq)
        return say_exception(message, len, "runtime");
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    n_required = 0;
    for (Py_ssize_t i = 0; i < n && n_required < MAX_NAMES; i++) {
        const char *s = PyUnicode_AsUTF8(PySequence_Fast_GET_ITEM(seq, i));
        if (!s) {
            Py_DECREF(seq);
            return say_exception(message, len, "runtime.required_arrays");
        }
        snprintf(required[n_required++], MLCU_NAME_LEN, "%s", s);
    }
    Py_DECREF(seq);
    return 0;
}

static int load_runtime(const char *model_path, int32_t nthreads, const char *device,
                        const char *nan_policy, const char *ood_policy, int32_t n_levels,
                        char *message, int32_t len)
{
    if (_import_array() < 0)
        return say_exception(message, len, "cannot import numpy");
    PyObject *module = PyImport_ImportModule("emulator.runtime");
    if (!module) {
        char where[OPTIONS_LEN];
        describe_python(where, sizeof where);
        char head[OPTIONS_LEN + 64];
        snprintf(head, sizeof head, "cannot import emulator.runtime%s", where);
        return say_exception(message, len, head);
    }
    PyObject *cls = PyObject_GetAttrString(module, "Runtime");
    Py_DECREF(module);
    PyObject *opts = Py_BuildValue("{s:s,s:i,s:s,s:s,s:s,s:i}", "model", model_path,
                                   "threads", (int)nthreads, "device", device, "nan_policy",
                                   nan_policy, "ood_policy", ood_policy, "n_levels", (int)n_levels);
    PyObject *runtime = (cls && opts) ? PyObject_CallMethod(cls, "from_options", "O", opts) : NULL;
    Py_XDECREF(cls);
    Py_XDECREF(opts);
    if (!runtime)
        return say_exception(message, len, "cannot load the model");
    int err = load_required(runtime, message, len);
    run_tile = err ? NULL : PyObject_GetAttrString(runtime, "run_tile");
    Py_DECREF(runtime);
    if (err)
        return err;
    if (!run_tile)
        return say_exception(message, len, "runtime");
    totals = PyDict_New();
    return totals ? 0 : say_exception(message, len, "runtime");
}

int mlcu_shim_init(const char *model_path, int32_t nthreads, const char *device,
                   const char *nan_policy, const char *ood_policy, int32_t n_levels,
                   char *message, int32_t message_len)
{
    char wanted[OPTIONS_LEN];
    snprintf(wanted, sizeof wanted, "model=%s threads=%d device=%s nan_policy=%s ood_policy=%s levels=%d",
             model_path, (int)nthreads, device, nan_policy, ood_policy, (int)n_levels);
    int err = 0;
    pthread_mutex_lock(&init_lock);
    if (interpreter_closed) {
        err = say(message, message_len, "the bridge was finalised; Python cannot be started twice");
    } else if (!Py_IsInitialized()) {
        err = start_python(message, message_len);
        if (!err) {
            err = load_runtime(model_path, nthreads, device, nan_policy, ood_policy, n_levels,
                               message, message_len);
            /* Release the GIL so that any thread (OpenMP tiles) can take it per call. */
            main_state = PyEval_SaveThread();
        }
    } else {
        PyGILState_STATE gil = PyGILState_Ensure();
        if (run_tile && strcmp(options, wanted) != 0)
            err = say(message, message_len, "the bridge is already running with other settings "
                      "(%s); asked for %s", options, wanted);
        else if (!run_tile)
            err = load_runtime(model_path, nthreads, device, nan_policy, ood_policy, n_levels,
                               message, message_len);
        PyGILState_Release(gil);
    }
    if (!err)
        snprintf(options, sizeof options, "%s", wanted);
    pthread_mutex_unlock(&init_lock);
    return err;
}

static int check_arrays(const mlcu_array_t *arrays, int32_t n, char *message, int32_t len)
{
    for (int32_t i = 0; i < n; i++) {
        const mlcu_array_t *a = &arrays[i];
        if (!a->data || (a->rank != 2 && a->rank != 3) ||
            (a->dtype != MLCU_REAL32 && a->dtype != MLCU_INT32) ||
            memchr(a->name, '\0', MLCU_NAME_LEN) == NULL)
            return say(message, len, "bridge: malformed description of array %d", (int)i + 1);
    }
    for (int r = 0; r < n_required; r++) {
        int found = 0;
        for (int32_t i = 0; i < n && !found; i++)
            found = strncmp(arrays[i].name, required[r], MLCU_NAME_LEN) == 0;
        if (!found)
            return say(message, len, "the model needs array %s, which the Fortran driver does not "
                       "pass (update module_cu_mlcu)", required[r]);
    }
    return 0;
}

/* Add the call's counters (a dict of ints) to the process totals. */
static int add_counters(PyObject *counters)
{
    if (!PyDict_Check(counters))
        return 0;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(counters, &pos, &key, &value)) {
        PyObject *old = PyDict_GetItemWithError(totals, key); /* borrowed */
        if (!old && PyErr_Occurred())
            return -1;
        PyObject *sum = old ? PyNumber_Add(old, value) : PyNumber_Long(value);
        if (!sum || PyDict_SetItem(totals, key, sum) < 0) {
            Py_XDECREF(sum);
            return -1;
        }
        Py_DECREF(sum);
    }
    return 0;
}

/* The tile's arrays as a dict of numpy arrays over the Fortran memory (no copy). */
static PyObject *wrap_arrays(const mlcu_array_t *arrays, int32_t n)
{
    PyObject *dict = PyDict_New();
    for (int32_t i = 0; dict && i < n; i++) {
        const mlcu_array_t *a = &arrays[i];
        npy_intp dims[3] = {(npy_intp)a->extent[0], (npy_intp)a->extent[1], (npy_intp)a->extent[2]};
        int type = a->dtype == MLCU_REAL32 ? NPY_FLOAT32 : NPY_INT32;
        PyObject *key = interned(a->name);
        PyObject *view = key ? PyArray_New(&PyArray_Type, a->rank, dims, type, NULL, a->data, 0,
                                           NPY_ARRAY_FARRAY, NULL)
                             : NULL;
        if (!key && !PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "too many distinct array names");
        if (!view || PyDict_SetItem(dict, key, view) < 0)
            Py_CLEAR(dict);
        Py_XDECREF(view);
    }
    return dict;
}

static void clear_cache(void)
{
    for (int s = 0; s < CACHE_SLOTS; s++) {
        Py_CLEAR(cache[s].dict);
        PyMem_Free(cache[s].arrays);
        cache[s].arrays = NULL;
        cache[s].n = 0;
    }
}

/* A fresh dict (the runtime may not keep or alter ours) of views over the described memory. */
static PyObject *tile_arrays(const mlcu_array_t *arrays, int32_t n)
{
    size_t bytes = (size_t)n * sizeof *arrays;
    for (int s = 0; s < CACHE_SLOTS; s++)
        if (cache[s].dict && cache[s].n == n && memcmp(cache[s].arrays, arrays, bytes) == 0)
            return PyDict_Copy(cache[s].dict);
    PyObject *dict = wrap_arrays(arrays, n);
    mlcu_array_t *copy = dict ? PyMem_Malloc(bytes) : NULL;
    if (copy) {
        int s = cache_next;
        cache_next = (cache_next + 1) % CACHE_SLOTS;
        Py_CLEAR(cache[s].dict);
        PyMem_Free(cache[s].arrays);
        memcpy(copy, arrays, bytes);
        cache[s].arrays = copy;
        cache[s].n = n;
        cache[s].dict = dict;
        return PyDict_Copy(dict);
    }
    return dict;
}

int mlcu_shim_run_tile(const mlcu_array_t *arrays, int32_t n_arrays, const int32_t *bounds,
                       float dt, float dx, float cudt, int32_t stepcu,
                       char *message, int32_t message_len)
{
    if (!Py_IsInitialized())
        return say(message, message_len, "the bridge is not initialised (call cu_mlcu_init first)");
    PyGILState_STATE gil = PyGILState_Ensure();
    int err = 0;
    if (!run_tile)
        err = say(message, message_len, "the bridge is not initialised (call cu_mlcu_init first)");
    if (!err)
        err = check_arrays(arrays, n_arrays, message, message_len);
    if (!err) {
        PyObject *dict = tile_arrays(arrays, n_arrays);
        PyObject *btuple = PyTuple_New(18);
        for (int i = 0; btuple && i < 18; i++)
            PyTuple_SET_ITEM(btuple, i, PyLong_FromLong(bounds[i]));
        PyObject *counters = NULL;
        if (dict && btuple)
            counters = PyObject_CallFunction(run_tile, "OOdddi", dict, btuple, (double)dt,
                                             (double)dx, (double)cudt, (int)stepcu);
        if (!counters || add_counters(counters) < 0)
            err = say_exception(message, message_len, "emulator runtime");
        Py_XDECREF(counters);
        Py_XDECREF(btuple);
        Py_XDECREF(dict);
    }
    PyGILState_Release(gil);
    return err;
}

int64_t mlcu_shim_counter(const char *name)
{
    if (!Py_IsInitialized())
        return 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int64_t n = 0;
    PyObject *v = totals ? PyDict_GetItemString(totals, name) : NULL; /* borrowed */
    if (v)
        n = (int64_t)PyLong_AsLongLong(v);
    PyErr_Clear();
    PyGILState_Release(gil);
    return n;
}

int mlcu_shim_counters(char *text, int32_t text_len)
{
    if (!text || text_len <= 0)
        return 1;
    text[0] = '\0';
    if (!Py_IsInitialized())
        return 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    int cut = 0;
    size_t used = 0;
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (totals && !cut && PyDict_Next(totals, &pos, &key, &value)) {
        const char *name = PyUnicode_Check(key) ? PyUnicode_AsUTF8(key) : NULL;
        long long n = PyLong_AsLongLong(value);
        if (!name || PyErr_Occurred()) {
            PyErr_Clear();
            continue;
        }
        int w = snprintf(text + used, (size_t)text_len - used, "%s%s=%lld", used ? " " : "",
                         name, n);
        if (w < 0 || (size_t)w >= (size_t)text_len - used) {
            text[used] = '\0'; /* drop the partial item: the line stays parseable */
            cut = 1;
        } else {
            used += (size_t)w;
        }
    }
    PyGILState_Release(gil);
    return cut;
}

int mlcu_shim_finalize(char *message, int32_t message_len)
{
    int err = 0;
    pthread_mutex_lock(&init_lock);
    if (Py_IsInitialized()) {
        PyGILState_STATE gil = PyGILState_UNLOCKED;
        if (owns_interpreter && main_state)
            PyEval_RestoreThread(main_state);
        else
            gil = PyGILState_Ensure();
        Py_CLEAR(run_tile);
        Py_CLEAR(totals);
        clear_cache();
        n_required = 0;
        options[0] = '\0';
        if (owns_interpreter) {
            for (int i = 0; i < n_names; i++)
                Py_CLEAR(names[i]);
            n_names = 0;
            main_state = NULL;
            if (Py_FinalizeEx() < 0)
                err = say(message, message_len, "Python reported errors while shutting down");
            interpreter_closed = 1;
        } else {
            PyGILState_Release(gil);
        }
    }
    pthread_mutex_unlock(&init_lock);
    return err;
}
