/* CPython binding of QJL and PolarQuant: the types _core.QJL and _core.PolarQuant.
 *
 * The Python layer (turboquant/qjl_polar.py) allocates every output array and passes it
 * in, so these methods only check shapes and dtypes, release the GIL and call the core. */
#include "py_common.h"

#include <math.h>
#include <string.h>

#include "cpu.h"
#include "qjl.h"

/* A C-contiguous buffer of item_count items with struct format `format` ("B" or "f"). */
static int acquire_buffer(PyObject *obj, const char *name, const char *format, size_t item_count, int writable,
                          Py_buffer *view)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT;
    if (writable) {
        flags |= PyBUF_WRITABLE;
    }
    if (PyObject_GetBuffer(obj, view, flags) != 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "%s must be a C-contiguous%s array with dtype %s (got %.100s)", name,
                     writable ? " writable" : "", format[0] == 'B' ? "uint8" : "float32", Py_TYPE(obj)->tp_name);
        return -1;
    }
    const char *got = view->format ? view->format : "B";
    if (got[0] == '<' || got[0] == '=' || got[0] == '@') {
        got++;
    }
    const Py_ssize_t itemsize = format[0] == 'B' ? 1 : 4;
    if (strcmp(got, format) != 0 || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s (got buffer format '%s')", name,
                     format[0] == 'B' ? "uint8" : "float32", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if ((size_t)view->len != item_count * (size_t)itemsize) {
        PyErr_Format(PyExc_ValueError, "%s has %zd items but %zu were expected", name, view->len / itemsize,
                     item_count);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

/* ---------------------------------------------------------------- QJL */

typedef struct {
    PyObject_HEAD
    tq_qjl *qjl;
    unsigned long long seed;
} QJLObject;

static int qjl_init(QJLObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"dim", "sketch_dim", "bits", "seed", NULL};
    int dim, sketch_dim, bits;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiK", keywords, &dim, &sketch_dim, &bits, &seed)) {
        return -1;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_isa isa;
    if (tq_isa_select(&isa, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_qjl *qjl = NULL;
    if (tq_qjl_create(dim, sketch_dim, bits, (uint64_t)seed, isa, &qjl, &err) != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_qjl_free(self->qjl);
    self->qjl = qjl;
    self->seed = seed;
    return 0;
}

static void qjl_dealloc(QJLObject *self)
{
    tq_qjl_free(self->qjl);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int qjl_ready(QJLObject *self)
{
    if (self->qjl == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "QJL object is not initialized; call QJL(dim, sketch_dim, bits, seed)");
        return 0;
    }
    return 1;
}

static PyObject *qjl_quantize(QJLObject *self, PyObject *args)
{
    PyObject *x_obj, *codes_obj, *norms_obj;
    if (!qjl_ready(self) || !PyArg_ParseTuple(args, "OOO", &x_obj, &codes_obj, &norms_obj)) {
        return NULL;
    }
    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", tq_qjl_dim(self->qjl), &x) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&x, "x") != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    const size_t n = (size_t)x.rows;
    Py_buffer codes, norms;
    if (acquire_buffer(codes_obj, "codes", "B", n * tq_qjl_code_bytes(self->qjl), 1, &codes) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 1, &norms) != 0) {
        PyBuffer_Release(&codes);
        tq_py_matrix_release(&x);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_qjl_quantize(self->qjl, x.data, n, codes.buf, norms.buf, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&norms);
    PyBuffer_Release(&codes);
    tq_py_matrix_release(&x);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *qjl_project(QJLObject *self, PyObject *args)
{
    PyObject *y_obj, *out_obj;
    if (!qjl_ready(self) || !PyArg_ParseTuple(args, "OO", &y_obj, &out_obj)) {
        return NULL;
    }
    tq_py_matrix y;
    if (tq_py_matrix_acquire(y_obj, "queries", tq_qjl_dim(self->qjl), &y) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&y, "queries") != 0) {
        tq_py_matrix_release(&y);
        return NULL;
    }
    const size_t n = (size_t)y.rows;
    Py_buffer out;
    if (acquire_buffer(out_obj, "out", "f", n * (size_t)tq_qjl_sketch_dim(self->qjl), 1, &out) != 0) {
        tq_py_matrix_release(&y);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    tq_qjl_project(self->qjl, y.data, n, out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    tq_py_matrix_release(&y);
    Py_RETURN_NONE;
}

static PyObject *qjl_inner_product(QJLObject *self, PyObject *args)
{
    PyObject *codes_obj, *norms_obj, *projected_obj, *out_obj;
    Py_ssize_t n_signed;
    if (!qjl_ready(self) || !PyArg_ParseTuple(args, "OOnOO", &codes_obj, &norms_obj, &n_signed, &projected_obj,
                                              &out_obj)) {
        return NULL;
    }
    if (n_signed < 0) {
        PyErr_Format(PyExc_ValueError, "n=%zd must not be negative", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    tq_py_matrix projected;
    if (tq_py_matrix_acquire(projected_obj, "projected", tq_qjl_sketch_dim(self->qjl), &projected) != 0) {
        return NULL;
    }
    const size_t n_queries = (size_t)projected.rows;
    Py_buffer codes, norms, out;
    if (acquire_buffer(codes_obj, "codes", "B", n * tq_qjl_code_bytes(self->qjl), 0, &codes) != 0) {
        tq_py_matrix_release(&projected);
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 0, &norms) != 0) {
        PyBuffer_Release(&codes);
        tq_py_matrix_release(&projected);
        return NULL;
    }
    if (acquire_buffer(out_obj, "out", "f", n * n_queries, 1, &out) != 0) {
        PyBuffer_Release(&norms);
        PyBuffer_Release(&codes);
        tq_py_matrix_release(&projected);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    tq_qjl_inner_product(self->qjl, codes.buf, norms.buf, n, projected.data, n_queries, out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&norms);
    PyBuffer_Release(&codes);
    tq_py_matrix_release(&projected);
    Py_RETURN_NONE;
}

static PyObject *qjl_dequantize(QJLObject *self, PyObject *args)
{
    PyObject *codes_obj, *norms_obj, *out_obj;
    Py_ssize_t n_signed;
    if (!qjl_ready(self) || !PyArg_ParseTuple(args, "OOnO", &codes_obj, &norms_obj, &n_signed, &out_obj)) {
        return NULL;
    }
    if (n_signed < 0) {
        PyErr_Format(PyExc_ValueError, "n=%zd must not be negative", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    Py_buffer codes, norms, out;
    if (acquire_buffer(codes_obj, "codes", "B", n * tq_qjl_code_bytes(self->qjl), 0, &codes) != 0) {
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 0, &norms) != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (acquire_buffer(out_obj, "out", "f", n * (size_t)tq_qjl_dim(self->qjl), 1, &out) != 0) {
        PyBuffer_Release(&norms);
        PyBuffer_Release(&codes);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    tq_qjl_dequantize(self->qjl, codes.buf, norms.buf, n, out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    PyBuffer_Release(&norms);
    PyBuffer_Release(&codes);
    Py_RETURN_NONE;
}

static PyObject *qjl_get_int(QJLObject *self, void *closure)
{
    if (!qjl_ready(self)) {
        return NULL;
    }
    const char *field = closure;
    if (strcmp(field, "dim") == 0) {
        return PyLong_FromLong(tq_qjl_dim(self->qjl));
    }
    if (strcmp(field, "sketch_dim") == 0) {
        return PyLong_FromLong(tq_qjl_sketch_dim(self->qjl));
    }
    if (strcmp(field, "bits") == 0) {
        return PyLong_FromLong(tq_qjl_bits(self->qjl));
    }
    if (strcmp(field, "code_bytes") == 0) {
        return PyLong_FromSize_t(tq_qjl_code_bytes(self->qjl));
    }
    return PyLong_FromUnsignedLongLong(self->seed);
}

static PyObject *qjl_get_kernels(QJLObject *self, void *closure)
{
    (void)closure;
    if (!qjl_ready(self)) {
        return NULL;
    }
    return PyUnicode_FromString(tq_isa_name(tq_qjl_isa(self->qjl)));
}

static PyObject *qjl_get_levels(QJLObject *self, void *closure)
{
    (void)closure;
    if (!qjl_ready(self)) {
        return NULL;
    }
    const float *levels = tq_qjl_levels(self->qjl);
    if (tq_qjl_bits(self->qjl) == 1) {
        return Py_BuildValue("(dd)", (double)levels[0], (double)levels[1]);
    }
    return Py_BuildValue("(dddd)", (double)levels[0], (double)levels[1], (double)levels[2], (double)levels[3]);
}

static PyObject *qjl_get_moments(QJLObject *self, void *closure)
{
    if (!qjl_ready(self)) {
        return NULL;
    }
    if (strcmp((const char *)closure, "gain") == 0) {
        return PyFloat_FromDouble(tq_qjl_gain(self->qjl));
    }
    return PyFloat_FromDouble(tq_qjl_fourth_moment(self->qjl));
}

static PyMethodDef qjl_methods[] = {
    {"quantize", (PyCFunction)qjl_quantize, METH_VARARGS,
     "quantize(x, codes, norms)\n\nWrite the packed codes (n, code_bytes) uint8 and norms (n,) float32 of x."},
    {"project", (PyCFunction)qjl_project, METH_VARARGS,
     "project(queries, out)\n\nWrite S y for each query row into out (n_queries, sketch_dim) float32."},
    {"inner_product", (PyCFunction)qjl_inner_product, METH_VARARGS,
     "inner_product(codes, norms, n, projected, out)\n\nWrite the estimates (n_queries, n) into out."},
    {"dequantize", (PyCFunction)qjl_dequantize, METH_VARARGS,
     "dequantize(codes, norms, n, out)\n\nWrite the estimator's reconstruction (n, dim) into out."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef qjl_getset[] = {
    {"dim", (getter)qjl_get_int, NULL, "Row length.", "dim"},
    {"sketch_dim", (getter)qjl_get_int, NULL, "Rows m of the Gaussian sketch S.", "sketch_dim"},
    {"bits", (getter)qjl_get_int, NULL, "Bits per sketch entry (1 or 2).", "bits"},
    {"seed", (getter)qjl_get_int, NULL, "Seed of the sketch.", "seed"},
    {"code_bytes", (getter)qjl_get_int, NULL, "Bytes of packed codes per row.", "code_bytes"},
    {"kernels", (getter)qjl_get_kernels, NULL, "Kernel variant chosen at creation.", NULL},
    {"levels", (getter)qjl_get_levels, NULL, "Quantizer levels for N(0, 1) input, ascending.", NULL},
    {"gain", (getter)qjl_get_moments, NULL, "E[u Q(u)] for u ~ N(0, 1).", "gain"},
    {"fourth_moment", (getter)qjl_get_moments, NULL, "E[u^2 Q(u)^2] for u ~ N(0, 1).", "fourth_moment"},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject QJLType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.QJL",
    .tp_basicsize = sizeof(QJLObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "QJL(dim, sketch_dim, bits, seed)\n\nC core of turboquant.QJL; use that class instead.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)qjl_init,
    .tp_dealloc = (destructor)qjl_dealloc,
    .tp_methods = qjl_methods,
    .tp_getset = qjl_getset,
};

int tq_py_init_qjl_polar(PyObject *module)
{
    if (PyType_Ready(&QJLType) != 0) {
        return -1;
    }
    Py_INCREF(&QJLType);
    if (PyModule_AddObject(module, "QJL", (PyObject *)&QJLType) != 0) {
        Py_DECREF(&QJLType);
        return -1;
    }
    return 0;
}
