/* CPython binding of QJL and PolarQuant: the types _core.QJL and _core.PolarQuant.
 *
 * The Python layer (turboquant/qjl_polar.py) allocates every output array and passes it
 * in, so these methods only check shapes and dtypes, release the GIL and call the core. */
#include "py_common.h"

#include <math.h>
#include <string.h>

#include "cpu.h"
#include "polar.h"
#include "qjl.h"

/* Acquire a C-contiguous buffer of rows * cols items with struct format `format` ("B" or "f").
 * rows often comes from the caller, so the product is overflow-checked: a wrapped product
 * could otherwise match a short buffer and let the core read past its end. */
static int acquire_buffer(PyObject *obj, const char *name, const char *format, size_t rows, size_t cols,
                          int writable, Py_buffer *view)
{
    const Py_ssize_t itemsize = format[0] == 'B' ? 1 : 4;
    size_t item_count, byte_count;
    if (!tq_mul_size(rows, cols, &item_count) || !tq_mul_size(item_count, (size_t)itemsize, &byte_count) ||
        byte_count > (size_t)PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_ValueError, "%s would need %zu x %zu items, which is too large; check n", name, rows,
                     cols);
        return -1;
    }
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
    if (strcmp(got, format) != 0 || view->itemsize != itemsize) {
        PyErr_Format(PyExc_TypeError, "%s must have dtype %s (got buffer format '%s')", name,
                     format[0] == 'B' ? "uint8" : "float32", view->format ? view->format : "B");
        PyBuffer_Release(view);
        return -1;
    }
    if ((size_t)view->len != byte_count) {
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
    if (acquire_buffer(codes_obj, "codes", "B", n, tq_qjl_code_bytes(self->qjl), 1, &codes) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 1, 1, &norms) != 0) {
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
    if (acquire_buffer(out_obj, "out", "f", n, (size_t)tq_qjl_sketch_dim(self->qjl), 1, &out) != 0) {
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
        PyErr_Format(PyExc_ValueError, "n=%zd is invalid; pass the number of stored rows (0 or more)", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    tq_py_matrix projected;
    if (tq_py_matrix_acquire(projected_obj, "projected", tq_qjl_sketch_dim(self->qjl), &projected) != 0) {
        return NULL;
    }
    const size_t n_queries = (size_t)projected.rows;
    Py_buffer codes, norms, out;
    if (acquire_buffer(codes_obj, "codes", "B", n, tq_qjl_code_bytes(self->qjl), 0, &codes) != 0) {
        tq_py_matrix_release(&projected);
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 1, 0, &norms) != 0) {
        PyBuffer_Release(&codes);
        tq_py_matrix_release(&projected);
        return NULL;
    }
    if (acquire_buffer(out_obj, "out", "f", n_queries, n, 1, &out) != 0) {
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
        PyErr_Format(PyExc_ValueError, "n=%zd is invalid; pass the number of stored rows (0 or more)", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    Py_buffer codes, norms, out;
    if (acquire_buffer(codes_obj, "codes", "B", n, tq_qjl_code_bytes(self->qjl), 0, &codes) != 0) {
        return NULL;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 1, 0, &norms) != 0) {
        PyBuffer_Release(&codes);
        return NULL;
    }
    if (acquire_buffer(out_obj, "out", "f", n, (size_t)tq_qjl_dim(self->qjl), 1, &out) != 0) {
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

/* ---------------------------------------------------------------- PolarQuant */

typedef struct {
    PyObject_HEAD
    tq_polar *polar;
    unsigned long long seed;
} PolarObject;

static int polar_init(PolarObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"dim", "radius_bits", "angle_bits", "radius_codebook", "qjl_bits", "seed", NULL};
    int dim, radius_bits, angle_bits, qjl_bits;
    PyObject *codebook_obj;
    unsigned long long seed;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "iiiOiK", keywords, &dim, &radius_bits, &angle_bits,
                                     &codebook_obj, &qjl_bits, &seed)) {
        return -1;
    }
    if (radius_bits < 1 || radius_bits > TQ_POLAR_MAX_BITS) {
        PyErr_Format(PyExc_ValueError, "PolarQuant radius_bits=%d is out of range; use 1 to %d", radius_bits,
                     TQ_POLAR_MAX_BITS);
        return -1;
    }
    Py_buffer codebook;
    const float *codebook_data = NULL;
    if (codebook_obj != Py_None) {
        if (acquire_buffer(codebook_obj, "radius_codebook", "f", (size_t)1 << radius_bits, 1, 0, &codebook) != 0) {
            return -1;
        }
        codebook_data = codebook.buf;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_isa isa;
    tq_polar *polar = NULL;
    tq_status status = tq_isa_select(&isa, &err);
    if (status == TQ_OK) {
        status = tq_polar_create(dim, radius_bits, angle_bits, codebook_data, qjl_bits, (uint64_t)seed, isa, &polar,
                                 &err);
    }
    if (codebook_data != NULL) {
        PyBuffer_Release(&codebook);
    }
    if (status != TQ_OK) {
        tq_py_raise(&err);
        return -1;
    }
    tq_polar_free(self->polar);
    self->polar = polar;
    self->seed = seed;
    return 0;
}

static void polar_dealloc(PolarObject *self)
{
    tq_polar_free(self->polar);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int polar_ready(PolarObject *self)
{
    if (self->polar == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "PolarQuant object is not initialized; call PolarQuant(...)");
        return 0;
    }
    return 1;
}

/* Buffers of stored codes for n rows: codes, norms and residual norms (None without QJL). */
typedef struct {
    Py_buffer codes;
    Py_buffer norms;
    Py_buffer residual_norms;
    int has_residual;
} polar_code_buffers;

static int polar_acquire_codes(PolarObject *self, PyObject *codes_obj, PyObject *norms_obj, PyObject *residual_obj,
                               size_t n, int writable, polar_code_buffers *out)
{
    const int needs_residual = tq_polar_qjl_bits(self->polar) > 0;
    out->has_residual = 0;
    if (needs_residual == (residual_obj == Py_None)) {
        PyErr_Format(PyExc_ValueError, "residual_norms must be %s for qjl_bits=%d",
                     needs_residual ? "a float32 array" : "None", tq_polar_qjl_bits(self->polar));
        return -1;
    }
    if (acquire_buffer(codes_obj, "codes", "B", n, tq_polar_code_bytes(self->polar), writable, &out->codes) != 0) {
        return -1;
    }
    if (acquire_buffer(norms_obj, "norms", "f", n, 1, writable, &out->norms) != 0) {
        PyBuffer_Release(&out->codes);
        return -1;
    }
    if (needs_residual) {
        if (acquire_buffer(residual_obj, "residual_norms", "f", n, 1, writable, &out->residual_norms) != 0) {
            PyBuffer_Release(&out->norms);
            PyBuffer_Release(&out->codes);
            return -1;
        }
        out->has_residual = 1;
    }
    return 0;
}

static void polar_release_codes(polar_code_buffers *buffers)
{
    if (buffers->has_residual) {
        PyBuffer_Release(&buffers->residual_norms);
    }
    PyBuffer_Release(&buffers->norms);
    PyBuffer_Release(&buffers->codes);
}

static float *residual_data(polar_code_buffers *buffers)
{
    return buffers->has_residual ? buffers->residual_norms.buf : NULL;
}

static PyObject *polar_quantize(PolarObject *self, PyObject *args)
{
    PyObject *x_obj, *codes_obj, *norms_obj, *residual_obj;
    if (!polar_ready(self) || !PyArg_ParseTuple(args, "OOOO", &x_obj, &codes_obj, &norms_obj, &residual_obj)) {
        return NULL;
    }
    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", tq_polar_dim(self->polar), &x) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&x, "x") != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    const size_t n = (size_t)x.rows;
    polar_code_buffers buffers;
    if (polar_acquire_codes(self, codes_obj, norms_obj, residual_obj, n, 1, &buffers) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_polar_quantize(self->polar, x.data, n, buffers.codes.buf, buffers.norms.buf, residual_data(&buffers),
                               &err);
    Py_END_ALLOW_THREADS
    polar_release_codes(&buffers);
    tq_py_matrix_release(&x);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *polar_dequantize(PolarObject *self, PyObject *args)
{
    PyObject *codes_obj, *norms_obj, *residual_obj, *out_obj;
    Py_ssize_t n_signed;
    if (!polar_ready(self) ||
        !PyArg_ParseTuple(args, "OOOnO", &codes_obj, &norms_obj, &residual_obj, &n_signed, &out_obj)) {
        return NULL;
    }
    if (n_signed < 0) {
        PyErr_Format(PyExc_ValueError, "n=%zd is invalid; pass the number of stored rows (0 or more)", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    polar_code_buffers buffers;
    if (polar_acquire_codes(self, codes_obj, norms_obj, residual_obj, n, 0, &buffers) != 0) {
        return NULL;
    }
    Py_buffer out;
    if (acquire_buffer(out_obj, "out", "f", n, (size_t)tq_polar_dim(self->polar), 1, &out) != 0) {
        polar_release_codes(&buffers);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_polar_dequantize(self->polar, buffers.codes.buf, buffers.norms.buf, residual_data(&buffers), n,
                                 out.buf, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    polar_release_codes(&buffers);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *polar_inner_product(PolarObject *self, PyObject *args)
{
    PyObject *codes_obj, *norms_obj, *residual_obj, *queries_obj, *out_obj;
    Py_ssize_t n_signed;
    if (!polar_ready(self) || !PyArg_ParseTuple(args, "OOOnOO", &codes_obj, &norms_obj, &residual_obj, &n_signed,
                                                &queries_obj, &out_obj)) {
        return NULL;
    }
    if (n_signed < 0) {
        PyErr_Format(PyExc_ValueError, "n=%zd is invalid; pass the number of stored rows (0 or more)", n_signed);
        return NULL;
    }
    const size_t n = (size_t)n_signed;
    tq_py_matrix queries;
    if (tq_py_matrix_acquire(queries_obj, "queries", tq_polar_dim(self->polar), &queries) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&queries, "queries") != 0) {
        tq_py_matrix_release(&queries);
        return NULL;
    }
    const size_t n_queries = (size_t)queries.rows;
    polar_code_buffers buffers;
    if (polar_acquire_codes(self, codes_obj, norms_obj, residual_obj, n, 0, &buffers) != 0) {
        tq_py_matrix_release(&queries);
        return NULL;
    }
    Py_buffer out;
    if (acquire_buffer(out_obj, "out", "f", n_queries, n, 1, &out) != 0) {
        polar_release_codes(&buffers);
        tq_py_matrix_release(&queries);
        return NULL;
    }
    tq_error err;
    tq_error_clear(&err);
    tq_status status;
    Py_BEGIN_ALLOW_THREADS
    status = tq_polar_inner_product(self->polar, buffers.codes.buf, buffers.norms.buf, residual_data(&buffers), n,
                                    queries.data, n_queries, out.buf, &err);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    polar_release_codes(&buffers);
    tq_py_matrix_release(&queries);
    if (status != TQ_OK) {
        return tq_py_raise(&err);
    }
    Py_RETURN_NONE;
}

static PyObject *polar_rotate(PolarObject *self, PyObject *args)
{
    PyObject *x_obj, *out_obj;
    if (!polar_ready(self) || !PyArg_ParseTuple(args, "OO", &x_obj, &out_obj)) {
        return NULL;
    }
    tq_py_matrix x;
    if (tq_py_matrix_acquire(x_obj, "x", tq_polar_dim(self->polar), &x) != 0) {
        return NULL;
    }
    if (tq_py_check_finite(&x, "x") != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    Py_buffer out;
    if (acquire_buffer(out_obj, "out", "f", (size_t)x.rows, (size_t)tq_polar_dim(self->polar), 1, &out) != 0) {
        tq_py_matrix_release(&x);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    tq_polar_rotate(self->polar, x.data, (size_t)x.rows, out.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&out);
    tq_py_matrix_release(&x);
    Py_RETURN_NONE;
}

static PyObject *polar_get_int(PolarObject *self, void *closure)
{
    if (!polar_ready(self)) {
        return NULL;
    }
    const char *field = closure;
    if (strcmp(field, "dim") == 0) {
        return PyLong_FromLong(tq_polar_dim(self->polar));
    }
    if (strcmp(field, "radius_bits") == 0) {
        return PyLong_FromLong(tq_polar_radius_bits(self->polar));
    }
    if (strcmp(field, "angle_bits") == 0) {
        return PyLong_FromLong(tq_polar_angle_bits(self->polar));
    }
    if (strcmp(field, "qjl_bits") == 0) {
        return PyLong_FromLong(tq_polar_qjl_bits(self->polar));
    }
    if (strcmp(field, "code_bytes") == 0) {
        return PyLong_FromSize_t(tq_polar_code_bytes(self->polar));
    }
    return PyLong_FromUnsignedLongLong(self->seed);
}

static PyObject *polar_get_kernels(PolarObject *self, void *closure)
{
    (void)closure;
    if (!polar_ready(self)) {
        return NULL;
    }
    return PyUnicode_FromString(tq_isa_name(tq_polar_isa(self->polar)));
}

static PyObject *polar_get_codebook(PolarObject *self, void *closure)
{
    (void)closure;
    if (!polar_ready(self)) {
        return NULL;
    }
    const int levels = 1 << tq_polar_radius_bits(self->polar);
    const float *radius = tq_polar_radius_codebook(self->polar);
    PyObject *values = PyTuple_New(levels);
    if (values == NULL) {
        return NULL;
    }
    for (int k = 0; k < levels; k++) {
        PyObject *value = PyFloat_FromDouble((double)radius[k]);
        if (value == NULL) {
            Py_DECREF(values);
            return NULL;
        }
        PyTuple_SET_ITEM(values, k, value);
    }
    return values;
}

static PyMethodDef polar_methods[] = {
    {"quantize", (PyCFunction)polar_quantize, METH_VARARGS,
     "quantize(x, codes, norms, residual_norms)\n\nWrite the codes and norms of x; residual_norms is None "
     "without QJL."},
    {"dequantize", (PyCFunction)polar_dequantize, METH_VARARGS,
     "dequantize(codes, norms, residual_norms, n, out)\n\nWrite the reconstructed rows (n, dim) into out."},
    {"inner_product", (PyCFunction)polar_inner_product, METH_VARARGS,
     "inner_product(codes, norms, residual_norms, n, queries, out)\n\nWrite the estimates (n_queries, n) into out."},
    {"rotate", (PyCFunction)polar_rotate, METH_VARARGS,
     "rotate(x, out)\n\nWrite R x for each row of x (n, dim) into out, R being the quantizer's rotation."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef polar_getset[] = {
    {"dim", (getter)polar_get_int, NULL, "Row length (even).", "dim"},
    {"radius_bits", (getter)polar_get_int, NULL, "Bits per radius code.", "radius_bits"},
    {"angle_bits", (getter)polar_get_int, NULL, "Bits per angle code.", "angle_bits"},
    {"qjl_bits", (getter)polar_get_int, NULL, "Bits per entry of the residual QJL sketch (0: none).", "qjl_bits"},
    {"code_bytes", (getter)polar_get_int, NULL, "Bytes of packed codes per row.", "code_bytes"},
    {"seed", (getter)polar_get_int, NULL, "Seed of the rotation and the residual sketch.", "seed"},
    {"kernels", (getter)polar_get_kernels, NULL, "Kernel variant chosen at creation.", NULL},
    {"radius_codebook", (getter)polar_get_codebook, NULL, "Radius centroids for unit rows, ascending.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PolarType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turboquant._core.PolarQuant",
    .tp_basicsize = sizeof(PolarObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PolarQuant(dim, radius_bits, angle_bits, radius_codebook, qjl_bits, seed)\n\n"
              "C core of turboquant.PolarQuant; use that class instead.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)polar_init,
    .tp_dealloc = (destructor)polar_dealloc,
    .tp_methods = polar_methods,
    .tp_getset = polar_getset,
};

int tq_py_init_qjl_polar(PyObject *module)
{
    if (PyType_Ready(&QJLType) != 0 || PyType_Ready(&PolarType) != 0) {
        return -1;
    }
    Py_INCREF(&QJLType);
    if (PyModule_AddObject(module, "QJL", (PyObject *)&QJLType) != 0) {
        Py_DECREF(&QJLType);
        return -1;
    }
    Py_INCREF(&PolarType);
    if (PyModule_AddObject(module, "PolarQuant", (PyObject *)&PolarType) != 0) {
        Py_DECREF(&PolarType);
        return -1;
    }
    return 0;
}
