/* turboquant._core.Sampler: the CPython face of csrc/sampler.h. */
#include "py_common.h"

#include <limits.h>
#include <math.h>
#include <string.h>

#include "sampler.h"

typedef struct {
    PyObject_HEAD
    tq_sampler *sampler;
    tq_sampler_params params;
    /* Set while a call runs without the GIL, so a second thread gets an error instead of
     * racing on the work buffers. */
    int busy;
} SamplerObject;

/* A read-only int32 view of a history argument: a buffer of int32 used in place, or a
 * sequence of ints copied into `owned`. */
typedef struct {
    Py_buffer view;
    int has_view;
    int32_t *owned;
    const int32_t *data;
    size_t length;
} HistoryArg;

static void history_release(HistoryArg *h)
{
    if (h->has_view) {
        PyBuffer_Release(&h->view);
        h->has_view = 0;
    }
    PyMem_Free(h->owned);
    h->owned = NULL;
}

static int history_acquire(PyObject *obj, HistoryArg *h)
{
    memset(h, 0, sizeof(*h));
    if (obj == NULL || obj == Py_None) {
        return 0;
    }

    if (PyObject_CheckBuffer(obj)) {
        if (PyObject_GetBuffer(obj, &h->view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) != 0) {
            return -1;
        }
        h->has_view = 1;
        const char *format = h->view.format ? h->view.format : "B";
        if (format[0] == '<' || format[0] == '=' || format[0] == '@') {
            format++;
        }
        const int is_int32 = h->view.itemsize == 4 && (strcmp(format, "i") == 0 || strcmp(format, "l") == 0);
        if (!is_int32 || h->view.ndim != 1) {
            PyErr_Format(PyExc_TypeError,
                         "history must be a 1-D int32 array or a sequence of ints (got buffer format '%s' with %d "
                         "dimensions); pass numpy.asarray(history, dtype=numpy.int32)",
                         h->view.format ? h->view.format : "B", h->view.ndim);
            history_release(h);
            return -1;
        }
        h->data = (const int32_t *)h->view.buf;
        h->length = (size_t)h->view.shape[0];
        return 0;
    }

    PyObject *seq = PySequence_Fast(obj, "history must be a 1-D int32 array or a sequence of ints");
    if (seq == NULL) {
        return -1;
    }
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    h->owned = PyMem_Malloc((size_t)(n > 0 ? n : 1) * sizeof(int32_t));
    if (h->owned == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const long value = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (value == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "history[%zd] must be an int token id", i);
            Py_DECREF(seq);
            history_release(h);
            return -1;
        }
        if (value < INT32_MIN || value > INT32_MAX) {
            PyErr_Format(PyExc_ValueError, "history[%zd] = %ld is not a token id", i, value);
            Py_DECREF(seq);
            history_release(h);
            return -1;
        }
        h->owned[i] = (int32_t)value;
    }
    Py_DECREF(seq);
    h->data = h->owned;
    h->length = (size_t)n;
    return 0;
}

/* Read a seed argument: None draws 64 bits from os.urandom, an int must fit in 64 bits. */
static int seed_from_object(PyObject *obj, uint64_t *seed)
{
    if (obj == NULL || obj == Py_None) {
        PyObject *os = PyImport_ImportModule("os");
        if (os == NULL) {
            return -1;
        }
        PyObject *bytes = PyObject_CallMethod(os, "urandom", "i", 8);
        Py_DECREF(os);
        if (bytes == NULL) {
            return -1;
        }
        uint64_t value = 0;
        const unsigned char *raw = (const unsigned char *)PyBytes_AS_STRING(bytes);
        for (int i = 0; i < 8; i++) {
            value = (value << 8) | raw[i];
        }
        Py_DECREF(bytes);
        *seed = value;
        return 0;
    }
    if (!PyLong_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "seed must be an int or None, got %.100s", Py_TYPE(obj)->tp_name);
        return -1;
    }
    const unsigned long long value = PyLong_AsUnsignedLongLong(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        PyErr_SetString(PyExc_ValueError, "seed must be an int in [0, 2**64)");
        return -1;
    }
    *seed = (uint64_t)value;
    return 0;
}

static void Sampler_dealloc(SamplerObject *self)
{
    tq_sampler_free(self->sampler);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Sampler_init(SamplerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"temperature",      "top_k",          "top_p", "min_p", "repetition_penalty",
                               "presence_penalty", "frequency_penalty", "penalty_last_n", "seed", NULL};
    tq_sampler_params params;
    tq_sampler_params_default(&params);
    double temperature = params.temperature, top_p = params.top_p, min_p = params.min_p;
    double repetition_penalty = params.repetition_penalty;
    double presence_penalty = params.presence_penalty, frequency_penalty = params.frequency_penalty;
    int top_k = params.top_k, penalty_last_n = params.penalty_last_n;
    PyObject *seed_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|didddddiO:Sampler", keywords, &temperature, &top_k, &top_p,
                                     &min_p, &repetition_penalty, &presence_penalty, &frequency_penalty,
                                     &penalty_last_n, &seed_obj)) {
        return -1;
    }
    params.temperature = (float)temperature;
    params.top_k = top_k;
    params.top_p = (float)top_p;
    params.min_p = (float)min_p;
    params.repetition_penalty = (float)repetition_penalty;
    params.presence_penalty = (float)presence_penalty;
    params.frequency_penalty = (float)frequency_penalty;
    params.penalty_last_n = penalty_last_n;
    if (seed_from_object(seed_obj, &params.seed) != 0) {
        return -1;
    }

    tq_error err;
    tq_error_clear(&err);
    tq_sampler *sampler = NULL;
    if (tq_sampler_create(&params, &sampler, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_sampler_free(self->sampler);
    self->sampler = sampler;
    self->params = params;
    return 0;
}

static int sampler_ready(SamplerObject *self)
{
    if (self->sampler == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Sampler.__init__ was not called");
        return 0;
    }
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError,
                        "this Sampler is in use by another thread; create one Sampler per thread");
        return 0;
    }
    return 1;
}

/* Acquire logits and history, checking shape; returns 0 or -1 with an exception set. */
static int acquire_inputs(PyObject *logits_obj, PyObject *history_obj, tq_py_matrix *logits, HistoryArg *history)
{
    if (tq_py_matrix_acquire(logits_obj, "logits", -1, logits) != 0) {
        return -1;
    }
    if (logits->rows != 1 || logits->view.ndim != 1) {
        PyErr_Format(PyExc_ValueError, "logits must be 1-D with shape (n_vocab,), got %d dimensions",
                     logits->view.ndim);
        tq_py_matrix_release(logits);
        return -1;
    }
    if (logits->cols < 1 || logits->cols > INT32_MAX) {
        PyErr_Format(PyExc_ValueError, "logits must hold between 1 and 2**31 - 1 values, got %zd", logits->cols);
        tq_py_matrix_release(logits);
        return -1;
    }
    if (history_acquire(history_obj, history) != 0) {
        tq_py_matrix_release(logits);
        return -1;
    }
    return 0;
}

static PyObject *Sampler_sample(SamplerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"logits", "history", NULL};
    PyObject *logits_obj = NULL, *history_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:sample", keywords, &logits_obj, &history_obj)) {
        return NULL;
    }
    if (!sampler_ready(self)) {
        return NULL;
    }
    tq_py_matrix logits;
    HistoryArg history;
    if (acquire_inputs(logits_obj, history_obj, &logits, &history) != 0) {
        return NULL;
    }

    tq_error err;
    tq_error_clear(&err);
    int32_t token = -1;
    tq_status status;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    status = tq_sampler_sample(self->sampler, logits.data, (int32_t)logits.cols, history.data, history.length,
                               &token, &err);
    Py_END_ALLOW_THREADS
    self->busy = 0;

    history_release(&history);
    tq_py_matrix_release(&logits);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    return PyLong_FromLong(token);
}

static PyObject *Sampler_probs(SamplerObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"logits", "history", NULL};
    PyObject *logits_obj = NULL, *history_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:probs", keywords, &logits_obj, &history_obj)) {
        return NULL;
    }
    if (!sampler_ready(self)) {
        return NULL;
    }
    tq_py_matrix logits;
    HistoryArg history;
    if (acquire_inputs(logits_obj, history_obj, &logits, &history) != 0) {
        return NULL;
    }

    /* The result is a fresh numpy.float64 array, filled in place through its buffer. */
    PyObject *result = NULL;
    PyObject *numpy = PyImport_ImportModule("numpy");
    if (numpy != NULL) {
        result = PyObject_CallMethod(numpy, "empty", "ns", logits.cols, "float64");
        Py_DECREF(numpy);
    }
    Py_buffer out;
    if (result == NULL || PyObject_GetBuffer(result, &out, PyBUF_C_CONTIGUOUS | PyBUF_WRITABLE) != 0) {
        Py_XDECREF(result);
        history_release(&history);
        tq_py_matrix_release(&logits);
        return NULL;
    }

    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    status = tq_sampler_probs(self->sampler, logits.data, (int32_t)logits.cols, history.data, history.length,
                              (double *)out.buf, &err);
    Py_END_ALLOW_THREADS
    self->busy = 0;

    PyBuffer_Release(&out);
    history_release(&history);
    tq_py_matrix_release(&logits);
    if (status != TQ_OK) {
        Py_DECREF(result);
        return tq_py_raise(&err);
    }
    return result;
}

static PyObject *Sampler_reseed(SamplerObject *self, PyObject *arg)
{
    if (!sampler_ready(self)) {
        return NULL;
    }
    uint64_t seed;
    if (seed_from_object(arg, &seed) != 0) {
        return NULL;
    }
    tq_sampler_reseed(self->sampler, seed);
    self->params.seed = seed;
    Py_RETURN_NONE;
}

static PyObject *Sampler_get_seed(SamplerObject *self, void *closure)
{
    (void)closure;
    return PyLong_FromUnsignedLongLong(self->params.seed);
}

static PyObject *Sampler_get_params(SamplerObject *self, void *closure)
{
    (void)closure;
    const tq_sampler_params *p = &self->params;
    return Py_BuildValue("{s:d,s:i,s:d,s:d,s:d,s:d,s:d,s:i,s:K}", "temperature", (double)p->temperature, "top_k",
                         (int)p->top_k, "top_p", (double)p->top_p, "min_p", (double)p->min_p, "repetition_penalty",
                         (double)p->repetition_penalty, "presence_penalty", (double)p->presence_penalty,
                         "frequency_penalty", (double)p->frequency_penalty, "penalty_last_n", (int)p->penalty_last_n,
                         "seed", (unsigned long long)p->seed);
}

static PyMethodDef Sampler_methods[] = {
    {"sample", (PyCFunction)(void (*)(void))Sampler_sample, METH_VARARGS | METH_KEYWORDS,
     "sample(logits, history=None) -> int\n\n"
     "Draw one token id from float32 logits of shape (n_vocab,). history contains the tokens seen so far\n"
     "(prompt and output, oldest first) as an int32 array or a sequence of ints; the penalties read its\n"
     "last penalty_last_n entries. Greedy sampling and filters that keep one token use no random numbers."},
    {"probs", (PyCFunction)(void (*)(void))Sampler_probs, METH_VARARGS | METH_KEYWORDS,
     "probs(logits, history=None) -> numpy.ndarray\n\n"
     "Return the float64 distribution of shape (n_vocab,) that sample() draws from, after every filter\n"
     "(0 for removed tokens). Uses no random numbers."},
    {"reseed", (PyCFunction)Sampler_reseed, METH_O,
     "reseed(seed)\n\nRestart the random stream as if the sampler had been created with this seed (None: random)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sampler_getset[] = {
    {"seed", (getter)Sampler_get_seed, NULL, "seed of the random stream (drawn from os.urandom when None was given)",
     NULL},
    {"params", (getter)Sampler_get_params, NULL, "dict of every sampling parameter, as validated", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SamplerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.Sampler",
    .tp_basicsize = sizeof(SamplerObject),
    .tp_dealloc = (destructor)Sampler_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Sampler(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,\n"
              "        presence_penalty=0.0, frequency_penalty=0.0, penalty_last_n=64, seed=None)\n\n"
              "Token sampler. Filters run in llama.cpp's default order: penalties (over the last\n"
              "penalty_last_n history tokens; -1 = all, 0 = none), top-k, top-p, min-p, temperature.\n"
              "Top-p and min-p see the distribution at temperature 1. temperature=0 is greedy (argmax\n"
              "after penalties). The same seed gives the same tokens on every run; seed=None draws one\n"
              "from os.urandom (see .seed). Not safe to share between threads.",
    .tp_methods = Sampler_methods,
    .tp_getset = Sampler_getset,
    .tp_init = (initproc)Sampler_init,
    .tp_new = PyType_GenericNew,
};

int tq_py_init_sampler(PyObject *module)
{
    if (PyType_Ready(&SamplerType) != 0) {
        return -1;
    }
    Py_INCREF(&SamplerType);
    if (PyModule_AddObject(module, "Sampler", (PyObject *)&SamplerType) != 0) {
        Py_DECREF(&SamplerType);
        return -1;
    }
    return 0;
}
